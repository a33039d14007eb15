"""The sink under a slow stream: latency and time-outs count as congestion (fake clock, no network).

The fake stream is single-threaded as LocalStack's kinesis-mock is: calls queue behind each
other and each takes a fixed time per record, so the latency a call sees grows with what
is in flight. Time is a fake clock advanced by the fake stream, never the wall clock.
"""

from __future__ import annotations

import asyncio
from typing import Any

from botocore.exceptions import ReadTimeoutError
from prometheus_client import CollectorRegistry

from event_processor import constants
from event_processor.metrics import Metrics
from event_processor.pipeline.sink import KinesisSink
from event_processor.retry import RetryPolicy
from tests.unit.test_sink import records, sequences_by_lane

NO_WAIT = RetryPolicy(initial_s=0.0, max_backoff_s=0.0)


class SerialKinesis:
    """One call at a time, `per_record_s` of fake time per record; records each call's latency."""

    def __init__(self, per_record_s: float) -> None:
        self.per_record_s = per_record_s
        self.now = 0.0
        self._busy_until = 0.0
        self._lock = asyncio.Lock()
        self.stored: list[tuple[str, bytes]] = []
        self.calls: list[tuple[int, float, int]] = []  # (records, latency, concurrent)
        self._concurrent = 0
        self.time_out_calls: set[int] = set()  # indices of calls that time out

    def clock(self) -> float:
        return self.now

    async def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        sent_at = self.now
        self._concurrent += 1
        concurrent = self._concurrent
        async with self._lock:
            done_at = max(self._busy_until, sent_at) + len(Records) * self.per_record_s
            self._busy_until = done_at
            await asyncio.sleep(0)  # let the other calls queue up behind this one
            self.now = max(self.now, done_at)
        self._concurrent -= 1
        self.calls.append((len(Records), done_at - sent_at, concurrent))
        if len(self.calls) - 1 in self.time_out_calls:
            # It landed, but the answer came too late: what a read time-out looks like.
            for entry in Records:
                self.stored.append((entry["PartitionKey"], entry["Data"]))
            raise ReadTimeoutError(endpoint_url="http://kinesis")
        results = []
        for entry in Records:
            self.stored.append((entry["PartitionKey"], entry["Data"]))
            results.append({"SequenceNumber": str(len(self.stored)), "ShardId": "shardId-0"})
        return {"FailedRecordCount": 0, "Records": results}


def make_sink(client: SerialKinesis, max_requests: int = 8) -> tuple[KinesisSink, Metrics]:
    metrics = Metrics(CollectorRegistry())
    sink = KinesisSink(client, "events", metrics, NO_WAIT, max_requests, clock=client.clock)  # type: ignore[arg-type]
    return sink, metrics


async def test_slow_calls_shrink_requests_until_they_answer_within_the_target() -> None:
    """A stream slow per record ends up with calls near the latency target, not queued up."""
    client = SerialKinesis(per_record_s=0.01)  # a full request of 500 takes 5 s
    sink, metrics = make_sink(client)
    await asyncio.gather(*(sink.publish(records(f"l{n}", 4)) for n in range(1500)))
    assert sequences_by_lane(client.stored) == {f"l{n}": [0, 1, 2, 3] for n in range(1500)}
    first, later = client.calls[:4], client.calls[len(client.calls) // 2 :]
    # Eight requests queue behind each other at first: the last waits for all of them.
    assert max(latency for _, latency, _ in first) > 4 * constants.PUT_TARGET_LATENCY_S
    # Then the window holds what the stream answers within the target (give or take the
    # growth between cuts).
    assert max(latency for _, latency, _ in later) <= 2 * constants.PUT_TARGET_LATENCY_S
    assert max(size for size, _, _ in later) < 500
    assert metrics.put_congestion_cuts._value.get() > 0
    assert metrics.put_window_records._value.get() < constants.PUT_RECORDS_MAX_RECORDS


async def test_a_fast_stream_keeps_the_full_window() -> None:
    """Calls within the target never cut the window: a healthy stream keeps full requests."""
    client = SerialKinesis(per_record_s=0.0001)  # 500 records in 50 ms
    sink, metrics = make_sink(client, max_requests=1)
    await asyncio.gather(*(sink.publish(records(f"l{n}", 2)) for n in range(2000)))
    assert len(client.stored) == 4000
    assert metrics.put_congestion_cuts._value.get() == 0
    assert max(size for size, _, _ in client.calls) == constants.PUT_RECORDS_MAX_RECORDS


async def test_a_timed_out_call_cuts_the_window_and_is_resent_once() -> None:
    """A time-out is congestion: the window drops to a quarter and the lanes go again later."""
    client = SerialKinesis(per_record_s=0.0001)
    client.time_out_calls = {1}  # the first carries the first lane alone, the second the rest
    sink, metrics = make_sink(client, max_requests=1)
    await asyncio.gather(*(sink.publish(records(f"l{n}", 1)) for n in range(400)))
    # The timed-out call had landed: its records are there twice (a duplicate by
    # construction), and every lane is complete.
    keys = [key for key, _ in client.stored]
    assert set(keys) == {f"l{n}" for n in range(400)}
    assert client.calls[1][0] > 100
    assert len(keys) == 400 + client.calls[1][0]
    assert metrics.put_congestion_cuts._value.get() == 1
    assert client.calls[2][0] <= client.calls[1][0] * constants.PUT_LATENCY_CUT_MIN
