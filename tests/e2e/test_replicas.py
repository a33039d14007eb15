"""Several replicas on one queue and stream, one killed mid-run: the delivery guarantee.

At least once, ordered per submission, deduplicable: every valid event is in the stream, the
first occurrences of each submission's events are in order, and every duplicate carries the
event_id of its first copy.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable

import pytest

from devworld.emulator import Emulator, World, read_stream
from devworld.faultproxy import FaultProxy
from devworld.verify import (
    decode_records,
    expected_device_order,
    expected_sequences,
    verify,
    verify_device_order,
)
from tests.factories import devices_bodies
from tests.helpers import (
    Cli,
    client,
    daemon_env,
    queue_counts,
    queue_depth,
    send_bodies,
    wait_for,
)

pytestmark = pytest.mark.e2e

REPLICAS = 3
DEVICES = 30  # each sends 20 submissions: a FIFO source has a group per device
# Short, so that the killed replica's messages come back within the test.
VISIBILITY_S = 3
CALL_LATENCY_S = 0.02  # each AWS call's, through the fault proxy


def start_replica(
    spawn_cli: Callable[..., Cli], emulator: Emulator, world: World, number: int, endpoint: str
) -> Cli:
    """One more `event-processor run` on the shared queue and stream, configured by env."""
    env = daemon_env(
        emulator,
        world,
        AWS_ENDPOINT_URL=endpoint,
        VISIBILITY_TIMEOUT=str(VISIBILITY_S),
        MAX_IN_FLIGHT="50",
        # Lifecycle lines only, as JSON: the "running" one is waited for (Cli.wait_running).
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
    )
    return spawn_cli(f"replica-{number}", "run", env=env)


def stream_size(emulator: Emulator, world: World) -> int:
    return len(read_stream(client(emulator, "kinesis"), world.stream_name))


@pytest.mark.parametrize("world", [False, True], ids=["standard", "fifo"], indirect=True)
def test_three_replicas_one_killed(
    emulator: Emulator, world: World, proxy: FaultProxy, spawn_cli: Callable[..., Cli]
) -> None:
    """Kill -9 one of three replicas mid-run: nothing lost, first occurrences in order, dups
    keep ids; on a FIFO source each device's submissions also stay in the order sent, across
    the replicas that took turns with its group."""
    rng = random.Random(3)
    bodies = devices_bodies(rng, DEVICES, 600)
    expected = expected_sequences(bodies)
    send_bodies(emulator, world.queue_url, bodies)
    # Every call takes an in-region round trip: on loopback three replicas drain 600
    # submissions before a later one has started, and the kill would hit an idle process.
    proxy.configure(latency_s=CALL_LATENCY_S)
    replicas = [
        start_replica(spawn_cli, emulator, world, n, proxy.endpoint_url) for n in range(REPLICAS)
    ]
    # Running means signal handlers installed: the SIGTERM below then stops them (exit 0).
    for replica in replicas:
        replica.wait_running()
    wait_for(lambda: stream_size(emulator, world) > 1000, 60.0, "1000 records", interval_s=0.05)
    in_flight = queue_counts(emulator, world.queue_url)
    assert in_flight[1] > 0, f"nothing in flight at the kill: {in_flight}"
    replicas[0].process.send_signal(signal.SIGKILL)
    assert replicas[0].process.wait(timeout=30) == -signal.SIGKILL
    wait_for(
        lambda: queue_depth(emulator, world.queue_url) == 0,
        90.0,
        "the other replicas draining the queue",
        interval_s=0.05,
    )
    for replica in replicas[1:]:
        replica.process.send_signal(signal.SIGTERM)
    codes = [r.process.wait(timeout=30) for r in replicas[1:]]
    assert codes == [0] * (REPLICAS - 1), [r.log_path.read_text() for r in replicas[1:]]

    raw = read_stream(client(emulator, "kinesis"), world.stream_name)
    result = verify(decode_records(raw), expected)
    print(
        f"\n[replicas] {REPLICAS} replicas, one killed with {in_flight[1]} messages in flight "
        f"(all replicas): {result.summary()}"
    )
    assert result.ok, result.summary()
    assert result.firsts == expected
    if world.fifo:
        order = verify_device_order(decode_records(raw), expected_device_order(bodies))
        assert order.ok, order.summary()
        assert order.pairs > len(bodies) // 2, order.summary()
