"""The in-process daemon behind the fault proxy: no loss and no reordering under AWS faults."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from devworld import faultproxy
from devworld.emulator import Emulator, World
from devworld.faultproxy import FaultProxy
from devworld.verify import expected_sequences
from tests.conftest import settings_for
from tests.factories import encode, fleet_like, submission
from tests.helpers import (
    check_order,
    eventually,
    metric_total,
    queue_counts,
    queue_depth,
    send_bodies,
    stream_records,
)

# Each scenario normally takes a few seconds; this bounds every wait of one.
SCENARIO_TIMEOUT_S = 45.0


async def test_no_loss_no_reorder_under_entry_failures_throttles_and_sqs_errors(
    emulator: Emulator, world: World, proxy: FaultProxy, daemon: Any
) -> None:
    """30% failed entries, 10% throttled Kinesis calls, 10% SQS 500s: all events land, in order."""
    rng = random.Random(31)
    bodies = [encode(fleet_like(rng)) for _ in range(100)]
    expected = expected_sequences(bodies)
    running = await daemon(settings_for(world, endpoint_url=proxy.endpoint_url))
    # Faults from here on: start-up itself is not under test. The proxy's seed fixes which calls
    # fail (the 7th Kinesis call is its first throttle), whatever order the calls come in.
    proxy.configure(put_records_entry_failure_rate=0.3, throttle_rate=0.1, sqs_error_rate=0.1)
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, bodies)

    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
        timeout_s=SCENARIO_TIMEOUT_S,
    )
    assert await running.stop() == 0
    proxy.clear()

    records = await asyncio.to_thread(stream_records, emulator, world)
    assert check_order(records) == expected
    # None of these faults can store a record twice (failed entries and throttled or failed
    # calls never reach the emulator), and nothing was redelivered: no duplicates either.
    assert len(records) == sum(len(s) for s in expected.values())

    stats = proxy.stats()
    entry_failures = proxy.injected(faultproxy.ENTRY_FAILURE)
    assert entry_failures > 0, stats
    assert proxy.injected(faultproxy.THROTTLE) > 0, stats
    assert proxy.injected(faultproxy.SQS_ERROR) > 0, stats
    registry = running.registry
    failed_records = metric_total(registry, "event_processor_put_records_failed_records_total")
    put_retries = running.metric("event_processor_retries_total", {"operation": "PutRecords"})
    # Every injected entry failure reached the daemon as a failed entry and was retried.
    assert failed_records >= entry_failures, (failed_records, stats)
    assert put_retries >= entry_failures, (put_retries, stats)
    assert running.metric("event_processor_submissions_total", {"outcome": "published"}) == 100
    assert running.metric("event_processor_submissions_total", {"outcome": "failed"}) == 0
    # The emulator's own answers, through retries: every lane's numbers grew on its shard.
    assert running.metric("event_processor_order_violations_total") == 0
    assert running.metric("event_processor_lane_shard_changes_total") == 0
    print(  # the measurements, for the report (pytest -s)
        f"\nfaults: {stats}\nrecords={len(records)} failed_records={failed_records:g} "
        f"retries={metric_total(registry, 'event_processor_retries_total'):g} "
        f"put_retries={put_retries:g}"
    )


async def test_stop_during_a_receive_hides_no_message(
    emulator: Emulator, world: World, proxy: FaultProxy, daemon: Any
) -> None:
    """A stop while a ReceiveMessage answer is on its way leaves no message invisible.

    The answer lands inside the daemon's receive window, so its messages are drained or
    released, not left hidden for the 60 s visibility timeout.
    """
    running = await daemon(
        settings_for(world, endpoint_url=proxy.endpoint_url, visibility_timeout=60)
    )
    worker = running.worker
    # The emulator answers at once (and hides the messages); the answer takes 0.5 s to arrive.
    proxy.receive_delay_s = 0.5
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, [encode(submission())] * 5)

    async def taken_not_arrived() -> bool:
        _, in_flight = await asyncio.to_thread(queue_counts, emulator, world.queue_url)
        return in_flight == 5 and worker.in_flight == 0 and proxy.pending("ReceiveMessage") > 0

    await eventually(taken_not_arrived, timeout_s=SCENARIO_TIMEOUT_S)
    assert await running.stop() == 0
    assert running.metric("event_processor_messages_received_total") == 5

    # Each message was either finished (deleted, its events published) or released: none
    # may stay hidden until the 60 s visibility timeout.
    visible, hidden = await asyncio.to_thread(queue_counts, emulator, world.queue_url)
    assert hidden == 0
    finished = running.metric("event_processor_submissions_total", {"outcome": "published"})
    assert visible + finished == 5
