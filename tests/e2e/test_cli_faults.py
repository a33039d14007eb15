"""The CLI as a subprocess behind the fault proxy: stopped by SIGTERM or killed, then restarted."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from devworld import faultproxy
from devworld.emulator import Emulator, World
from devworld.faultproxy import FaultProxy
from devworld.verify import (
    expected_device_order,
    expected_sequences,
    verify,
    verify_device_order,
)
from tests.factories import devices_bodies, encode, fleet_like
from tests.helpers import Cli, check_order, queue_depth, send_bodies, stream_records, wait_for

SUBMISSIONS = 300
DEVICES = 8  # each sends several submissions: a FIFO source has a group per device
MAX_IN_FLIGHT = 20
# A first process is stopped once this many records are in the stream: well under way.
RECORDS_BEFORE_STOP = 300
DRAIN_TIMEOUT_S = 90.0
FAULTS: dict[str, Any] = {
    "put_records_entry_failure_rate": 0.3,
    "throttle_rate": 0.05,
    "sqs_error_rate": 0.1,
}


def not_visible(emulator: Emulator, queue_url: str) -> int:
    attrs = emulator.boto3_client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessagesNotVisible"])


def wait_under_way(emulator: Emulator, world: World, proxy: FaultProxy, first: Cli) -> None:
    """Wait for the first process to publish a good part of the backlog, under faults."""
    first.wait_running()
    proxy.configure(**FAULTS)  # from here on: start-up itself is not under test

    def under_way() -> bool:
        assert first.process.poll() is None, first.log_path.read_text()
        return len(stream_records(emulator, world)) >= RECORDS_BEFORE_STOP

    wait_for(under_way, DRAIN_TIMEOUT_S, "records in the stream", interval_s=0.2)


def drain_with_second(
    emulator: Emulator, world: World, proxy: FaultProxy, start: Callable[..., Cli], *flags: str
) -> Cli:
    """A second process, under the same faults, until the queue is empty; then SIGTERM."""
    proxy.clear()
    second = start("second", *flags)
    second.wait_running()
    proxy.configure(**FAULTS)

    def drained() -> bool:
        assert second.process.poll() is None, second.log_path.read_text()
        return queue_depth(emulator, world.queue_url) == 0

    wait_for(drained, DRAIN_TIMEOUT_S, "the second process draining the queue", interval_s=0.2)
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(timeout=30) == 0, second.log_path.read_text()
    proxy.clear()
    return second


def check_stream(emulator: Emulator, world: World, bodies: list[str]) -> tuple[int, int]:
    """No loss, first-occurrence order, duplicates with their first copy's event_id.

    Returns (records, duplicates).
    """
    records = stream_records(emulator, world)
    expected = expected_sequences(bodies)
    assert check_order(records) == expected  # asserts the duplicates' event_ids too
    result = verify(records, expected)
    assert result.ok, result.summary()
    return result.records, result.duplicates


@pytest.mark.e2e
def test_sigterm_releases_unfinished_work_and_a_restart_finishes_it(
    emulator: Emulator, world: World, proxy: FaultProxy, cli: Callable[..., Cli]
) -> None:
    """SIGTERM mid-backlog: exit 0 in the grace, unfinished messages visible at once, no loss."""
    rng = random.Random(41)
    bodies = [encode(fleet_like(rng)) for _ in range(SUBMISSIONS)]
    send_bodies(emulator, world.queue_url, bodies)
    grace_s = 1.0
    first = cli(
        "first",
        "--max-in-flight", str(MAX_IN_FLIGHT),
        "--visibility-timeout", "60",
        "--shutdown-grace-seconds", str(grace_s),
    )  # fmt: skip

    wait_under_way(emulator, world, proxy, first)
    faults_first = proxy.stats()
    # From the signal on, Kinesis refuses every entry: the work in flight cannot finish within
    # the grace and must be released. Receives fail without reaching SQS, and the signal waits
    # until no receive is on its way back: a stop in the middle of one hides its messages for
    # the visibility timeout (the daemon bug test_stop_during_a_receive_hides_no_message shows).
    proxy.configure(
        put_records_entry_failure_rate=1.0, fail_operations=frozenset({"ReceiveMessage"})
    )
    wait_for(lambda: proxy.pending("ReceiveMessage") == 0, 10.0, "receives answered")
    first.process.send_signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    assert first.process.wait(timeout=grace_s + 15) == 0, first.log_path.read_text()
    stopped_after_s = time.monotonic() - signalled_at
    proxy.clear()

    # Released with visibility 0: visible again at once, not after the 60 s timeout.
    wait_for(
        lambda: not_visible(emulator, world.queue_url) == 0,
        2.0,
        "unfinished messages visible again after the exit",
    )
    released = first.actions("released")
    assert len(released) == 1, first.log_path.read_text()
    # `asked` counts the unfinished; a delete already on the wire may have beaten the release.
    assert 0 < released[0]["count"] <= released[0]["asked"] <= MAX_IN_FLIGHT, released
    left = queue_depth(emulator, world.queue_url)
    assert 0 < left < SUBMISSIONS
    records_first = len(stream_records(emulator, world))

    second = drain_with_second(
        emulator, world, proxy, cli, "--max-in-flight", "200", "--visibility-timeout", "60"
    )
    assert not second.actions("released")
    records, duplicates = check_stream(emulator, world, bodies)
    assert faults_first["injected"].get(faultproxy.ENTRY_FAILURE, 0) > 0, faults_first
    assert faults_first["injected"].get(faultproxy.SQS_ERROR, 0) > 0, faults_first
    print(
        f"\nSIGTERM: exit 0 after {stopped_after_s:.2f} s, released {released[0]['count']}, "
        f"{left} messages left, {records_first} records from the first process; "
        f"{records} records in all, {duplicates} duplicates; faults injected: first "
        f"{faults_first['injected']}, both {proxy.stats()['injected']}"
    )


@pytest.mark.e2e
@pytest.mark.parametrize("world", [False, True], ids=["standard", "fifo"], indirect=True)
def test_kill_9_then_restart_loses_nothing(
    emulator: Emulator, world: World, proxy: FaultProxy, cli: Callable[..., Cli]
) -> None:
    """SIGKILL mid-backlog: messages come back after the visibility timeout, a restart finishes.
    On a FIFO source each device's submissions also stay in the order sent (the dead process
    held several of a group, some extended and some not: SQS hands the group out again from
    its first message)."""
    rng = random.Random(42)
    bodies = devices_bodies(rng, DEVICES, SUBMISSIONS)
    send_bodies(emulator, world.queue_url, bodies)  # a FIFO group per device, in this order
    first = cli("first", "--max-in-flight", str(MAX_IN_FLIGHT), "--visibility-timeout", "3")

    wait_under_way(emulator, world, proxy, first)
    first.process.send_signal(signal.SIGKILL)
    assert first.process.wait(timeout=15) == -signal.SIGKILL
    faults_first = proxy.stats()
    left = queue_depth(emulator, world.queue_url)
    held = not_visible(emulator, world.queue_url)
    assert 0 < left < SUBMISSIONS
    assert held > 0, "nothing was in flight when the process died"
    records_first = len(stream_records(emulator, world))

    # The second process keeps a normal timeout: with 3 s and 200 in flight, its heartbeat
    # (one ChangeMessageVisibilityBatch of 10 after another) falls behind and messages come
    # back to it while in flight: hundreds of duplicates that say nothing about the kill.
    drain_with_second(
        emulator, world, proxy, cli, "--max-in-flight", "200", "--visibility-timeout", "30"
    )
    records, duplicates = check_stream(emulator, world, bodies)
    if world.fifo:
        order = verify_device_order(stream_records(emulator, world), expected_device_order(bodies))
        assert order.ok, order.summary()
        assert order.pairs > SUBMISSIONS // 2, order.summary()
    assert faults_first["injected"].get(faultproxy.ENTRY_FAILURE, 0) > 0, faults_first
    print(
        f"\nkill -9: {left} messages left ({held} held invisible by the dead process), "
        f"{records_first} records from the first process; {records} records in all, "
        f"{duplicates} duplicates; faults injected: first {faults_first['injected']}, "
        f"both {proxy.stats()['injected']}"
    )
