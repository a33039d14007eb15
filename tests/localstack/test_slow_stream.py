"""A backlog big enough that kinesis-mock slows down (its PutRecords costs grow with the records
a shard holds): nothing may be lost or reordered, and the duplicate share stays under 1%."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devworld.emulator import World
from devworld.verify import verify
from tests.localstack.support import (
    Daemon,
    LocalStack,
    daemon,
    fleet_load,
    queue_depth,
    stream_records,
    world_env,
)

pytestmark = pytest.mark.localstack

# ~20,000 events, ~10,000 a shard: kinesis-mock's cost per record grows with what a shard
# holds, and past ~15,000 events the daemon's throughput falls to a fraction of its start
# (the congestion window shrinks the calls so that each still takes about a second).
SUBMISSIONS = 2500
SEED = 47
DRAIN_TIMEOUT_S = 900.0
# The premise, checked: the drain's last stretch publishes this many times slower than its
# first, or the stream never got slow and the test proved nothing about slow streams.
MIN_SLOWDOWN = 2.0
# How often the test reads the daemon's PutRecords latency while it drains.
SAMPLE_S = 10.0
MAX_DUPLICATE_SHARE = 0.01
PUT_RECORDS = {"operation": "PutRecords"}


def put_records_seconds(running: Daemon) -> tuple[float, float]:
    """(calls, seconds spent) in PutRecords so far."""
    return (
        running.total("event_processor_aws_call_duration_seconds_count", **PUT_RECORDS),
        running.total("event_processor_aws_call_duration_seconds_sum", **PUT_RECORDS),
    )


def events_per_second(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """The publishing rate between the samples where the share of the last sample's events
    published first reached `start` and `end`."""
    total = samples[-1][1]
    t0, n0 = next(x for x in samples if x[1] >= start * total)
    t1, n1 = next(x for x in samples if x[1] >= end * total)
    assert t1 > t0, f"too few samples between {start:.0%} and {end:.0%}: {samples}"
    return (n1 - n0) / (t1 - t0)


def test_slow_stream_loses_nothing_and_duplicates_little(
    localstack: LocalStack, fresh_world: World, tmp_path: Path
) -> None:
    """As shards fill and PutRecords slows down: no event missing or out of order, dups < 1%."""
    world = fresh_world
    load = fleet_load(localstack, SUBMISSIONS, SEED, QUEUE_URL=world.queue_url)
    expected = load.expected()
    print(f"\n[slow stream] {load.report}")
    began = time.monotonic()
    with daemon(localstack, tmp_path / "daemon.log", **world_env(world)) as running:
        calls, spent = 0.0, 0.0
        samples: list[tuple[float, float]] = [(0.0, 0.0)]  # (seconds, events published)
        # A poll with a deadline; each round also prints how PutRecords slows down.
        while queue_depth(localstack, world.queue_url) > 0:
            elapsed = time.monotonic() - began
            assert elapsed < DRAIN_TIMEOUT_S, f"not drained within {DRAIN_TIMEOUT_S:g} s"
            assert running.process.poll() is None, f"daemon exited: {running.process.returncode}"
            now_calls, now_spent = put_records_seconds(running)
            samples.append((elapsed, running.total("event_processor_events_published_total")))
            if now_calls > calls:
                published = running.total("event_processor_events_published_total")
                mean = (now_spent - spent) / (now_calls - calls)
                print(f"[slow stream] {elapsed:5.0f} s: {published:6.0f} events published, "
                      f"PutRecords mean {mean:5.2f} s over the last {now_calls - calls:.0f} calls")  # fmt: skip
                calls, spent = now_calls, now_spent
            time.sleep(SAMPLE_S)  # the poll's interval, not a synchronisation
        retries = running.total("event_processor_retries_total")
        errors = running.total("event_processor_aws_call_errors_total")
        code, _ = running.terminate()
    took = time.monotonic() - began
    result = verify(stream_records(localstack, world), expected)
    share = result.duplicates / max(result.records, 1)
    print(f"[slow stream] drained in {took:.0f} s; {result.summary()}")
    print(f"[slow stream] duplicate share {share:.2%} ({result.duplicates} of {result.records} "
          f"records); retries {retries:.0f}, AWS call errors {errors:.0f}")  # fmt: skip
    assert code == 0
    first, late = events_per_second(samples, 0.0, 0.3), events_per_second(samples, 0.6, 0.9)
    print(f"[slow stream] events/s over the first 30% {first:.0f}, from 60% to 90% {late:.0f}")
    assert first >= MIN_SLOWDOWN * late, f"the stream never slowed down: {samples}"
    assert not result.missing, result.summary()
    assert not result.out_of_order, result.summary()
    assert not result.split_across_shards, result.summary()
    assert not result.changed_ids, result.summary()
    assert result.ok, result.summary()
    assert share < MAX_DUPLICATE_SHARE, f"duplicate share {share:.2%}"
