"""Outages and throttling, end to end against the emulator behind the fault proxy.

These run for real time (a Kinesis outage of several visibility timeouts), so each prints
what it measured: run with `pytest -s tests/integration/test_outages.py` to see the figures.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from devworld.emulator import Emulator, World, free_port
from devworld.faultproxy import KINESIS_DOWN, SHARD_THROTTLED, FaultProxy
from devworld.verify import expected_sequences
from tests.conftest import settings_for
from tests.factories import encode, fleet_like
from tests.helpers import (
    check_order,
    drain_queue,
    eventually,
    metric_total,
    queue_counts,
    queue_depth,
    send_bodies,
    stream_records,
)

# The outage lasts 4 visibility timeouts (VISIBILITY_TIMEOUT's minimum is 2 s): without the
# heartbeat, every in-flight message would be received again every 2 s during it, and
# redriven to the DLQ after its second receive. The scale is the visibility timeout, not
# the wall clock: a 60 s outage with 5 s showed the same.
VISIBILITY_S = 2
MAX_RECEIVE_COUNT = 2
OUTAGE_S = 4.0 * VISIBILITY_S
MAX_IN_FLIGHT = 20


async def readyz(port: int) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status


@pytest.mark.parametrize("down_mode", ["500", "reset"])
async def test_kinesis_outage_holds_messages_then_publishes_everything(
    emulator: Emulator,
    make_world: Callable[..., World],
    proxy: FaultProxy,
    daemon: Any,
    down_mode: str,
) -> None:
    """Kinesis down for 4 visibility timeouts: receiving stops, messages stay held, nothing is
    deleted, redriven or lost; back up: everything published once, in order."""
    rng = random.Random(60)
    bodies = [encode(fleet_like(rng)) for _ in range(60)]
    expected = expected_sequences(bodies)
    world = make_world(visibility_timeout_s=VISIBILITY_S, max_receive_count=MAX_RECEIVE_COUNT)
    port = free_port()
    running = await daemon(
        settings_for(
            world,
            endpoint_url=proxy.endpoint_url,
            visibility_timeout=VISIBILITY_S,
            max_in_flight=MAX_IN_FLIGHT,
            batch_size=5,
            metrics_port=port,
        )
    )
    worker = running.worker
    assert worker.ready
    proxy.configure(kinesis_down=True, down_mode=down_mode)
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, bodies)

    # Kinesis counts as down once a few whole calls failed: /readyz says so.
    await eventually(lambda: readyz_is(port, 503), timeout_s=30)
    assert not worker.ready

    async def held() -> tuple[int, int] | None:
        """The queue's (visible, hidden) once every message is still in SQS and the received
        ones are all in flight in the daemon; None before the last receive has landed."""
        visible, hidden = await asyncio.to_thread(queue_counts, emulator, world.queue_url)
        if visible + hidden == len(bodies) and hidden == worker.in_flight > 0:
            return visible, hidden
        return None

    async def all_held() -> bool:
        return await held() is not None

    # Receivers stop once the sink is down; let the last receive land before comparing.
    await eventually(all_held, timeout_s=30)
    counts = await held()
    assert counts is not None
    visible, hidden = counts
    assert hidden <= MAX_IN_FLIGHT, "the in-flight bound holds"
    receives_at_down = proxy.calls("ReceiveMessage")
    failed_calls_at_down = proxy.injected(KINESIS_DOWN)
    outage_began = time.monotonic()
    while time.monotonic() - outage_began < OUTAGE_S:
        await asyncio.sleep(0.5)  # the outage is the scenario: time passing is the point
        # Nothing was taken, deleted, published or given back meanwhile.
        assert await held() == (visible, hidden), "a message left SQS or flight"
        assert await readyz(port) == 503
        assert not worker.ready, "ready while Kinesis is down"
        assert proxy.forwarded("DeleteMessageBatch") == 0, "a message was deleted"
        assert proxy.forwarded("PutRecords") == 0
    # Receivers stopped: at most the long polls already under way when it went down.
    assert proxy.calls("ReceiveMessage") - receives_at_down <= 4
    # The sink kept trying, and the heartbeat kept every held message hidden.
    assert proxy.injected(KINESIS_DOWN) >= failed_calls_at_down + 5
    assert (
        running.metric("event_processor_visibility_extensions_total")
        >= hidden * (OUTAGE_S / VISIBILITY_S) / 2
    )
    assert await asyncio.to_thread(stream_records, emulator, world) == []
    assert running.metric("event_processor_submissions_total", {"outcome": "failed"}) == 0
    outage_calls = proxy.injected(KINESIS_DOWN)

    proxy.kinesis_down = False
    recovered = time.monotonic()
    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
        timeout_s=60,
    )
    drain_s = time.monotonic() - recovered
    await eventually(lambda: worker.ready, timeout_s=30)
    assert await readyz(port) == 200
    assert await running.stop() == 0

    records = await asyncio.to_thread(stream_records, emulator, world)
    assert check_order(records) == expected
    assert len(records) == sum(len(s) for s in expected.values()), "duplicates"
    published = running.metric("event_processor_submissions_total", {"outcome": "published"})
    assert published == len(bodies)
    dead = await asyncio.to_thread(drain_queue, emulator, world.dlq_url)
    valid_in_dlq = [m for m in dead if "reason" not in m.get("MessageAttributes", {})]
    assert valid_in_dlq == [], "a valid submission was redriven to the DLQ"
    print(
        f"\n[outage {down_mode}] {OUTAGE_S:.0f} s Kinesis outage ({outage_calls} calls failed), "
        f"{hidden} messages held in flight, "
        f"{running.metric('event_processor_visibility_extensions_total'):.0f} visibility "
        f"extensions; drained {len(bodies)} submissions in {drain_s:.1f} s after recovery; "
        f"retries={metric_total(running.registry, 'event_processor_retries_total'):g}"
    )


async def readyz_is(port: int, status: int) -> bool:
    return await readyz(port) == status


async def test_sqs_outage_is_logged_once_per_state_change(
    emulator: Emulator,
    world: World,
    proxy: FaultProxy,
    daemon: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SQS down: receivers retry with backoff and log the outage and the recovery once each."""
    caplog.set_level(logging.WARNING, logger="event_processor")
    running = await daemon(settings_for(world, endpoint_url=proxy.endpoint_url, receivers=4))
    proxy.sqs_down = True
    await eventually(lambda: _true(proxy.calls("ReceiveMessage") > 20), timeout_s=30)
    proxy.sqs_down = False
    rng = random.Random(5)
    bodies = [encode(fleet_like(rng)) for _ in range(10)]
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, bodies)
    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
        timeout_s=30,
    )
    assert await running.stop() == 0
    actions = [getattr(r, "action", None) for r in caplog.records]
    assert actions.count("source_down") == 1
    assert actions.count("source_up") == 1
    records = await asyncio.to_thread(stream_records, emulator, world)
    assert check_order(records) == expected_sequences(bodies)


async def _true(value: bool) -> bool:
    return value


async def test_throttled_shards_converge_without_a_retry_storm(
    emulator: Emulator, world: World, proxy: FaultProxy, daemon: Any
) -> None:
    """Per-shard token buckets answer excess records as throttled; retries stay a bounded share."""
    rng = random.Random(1000)
    bodies = [encode(fleet_like(rng)) for _ in range(300)]
    expected = expected_sequences(bodies)
    events = sum(len(s) for s in expected.values())
    # A tenth of a real shard's 1,000 records/s, so that the test needs a few seconds.
    per_shard = 100.0
    proxy.configure(shard_records_per_s=per_shard, shard_count=2)
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, bodies)
    began = time.monotonic()
    running = await daemon(settings_for(world, endpoint_url=proxy.endpoint_url))
    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
        timeout_s=120,
    )
    elapsed = time.monotonic() - began
    assert await running.stop() == 0

    records = await asyncio.to_thread(stream_records, emulator, world)
    assert check_order(records) == expected
    throttled = proxy.injected(SHARD_THROTTLED)
    failed = metric_total(running.registry, "event_processor_put_records_failed_records_total")
    assert failed == throttled > 0
    retry_share = throttled / events
    rate = events / elapsed
    print(
        f"\n[throttle] {events} events through 2 shards at {per_shard:.0f} records/s each: "
        f"{elapsed:.1f} s ({rate:.0f} records/s, limit {2 * per_shard:.0f}); "
        f"{throttled} throttled entries = {retry_share:.2f} retries per published record"
    )
    # Without adaptation every request would be re-sent into the bucket many times over.
    # Measured 0.66-2.03 across runs on this 2-core VM (it depends on the round trip under
    # load); 11.6 before the congestion window. 3.0 keeps the test about storms, not noise.
    assert retry_share < 3.0
    # Converged to the limit: the shards' capacity is used, not wasted in backoff.
    assert rate > 0.5 * 2 * per_shard


async def test_cancelling_the_daemon_drains_and_releases_like_a_stop(
    emulator: Emulator, world: World, proxy: FaultProxy, daemon: Any
) -> None:
    """A cancelled daemon task still releases its unfinished messages (visible again at once)."""
    running = await daemon(
        settings_for(
            world,
            endpoint_url=proxy.endpoint_url,
            visibility_timeout=60,
            shutdown_grace_seconds=1,
        )
    )
    proxy.kinesis_down = True  # from here nothing can finish: every message stays in flight
    bodies = [encode(fleet_like(random.Random(n))) for n in range(20)]
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, bodies)
    await eventually(lambda: _true(running.worker.in_flight == len(bodies)))
    running.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running.task, timeout=30)
    # Released with visibility 0, not left hidden for the 60 s visibility timeout.
    counts = await asyncio.to_thread(queue_counts, emulator, world.queue_url)
    assert counts == (len(bodies), 0)
    proxy.kinesis_down = False
