"""The lane batcher's rules, driven by a fake Kinesis client (pure logic, no network)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from prometheus_client import CollectorRegistry

from event_processor import constants
from event_processor.contract.records import Record
from event_processor.contract.rules import EventType
from event_processor.errors import PublishFailed
from event_processor.metrics import Metrics
from event_processor.pipeline.sink import KinesisSink, sequence_after
from event_processor.retry import RetryPolicy
from tests.helpers import eventually

NO_WAIT = RetryPolicy(initial_s=0.0, max_backoff_s=0.0)


class FakeKinesis:
    """Stores what PutRecords accepted; fails entries or whole calls as told."""

    def __init__(self, entry_failure_rate: float = 0.0, seed: int = 1) -> None:
        self.stored: list[tuple[str, bytes]] = []
        self.requests: list[list[dict[str, Any]]] = []
        self.entry_failure_rate = entry_failure_rate
        self.fail_calls: BaseException | None = None
        self.rng = random.Random(seed)
        self.gate: asyncio.Event | None = None
        self.requested = asyncio.Event()  # set by the first PutRecords call
        self.probes = 0  # DescribeStreamSummary calls

    async def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.requests.append(Records)
        self.requested.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_calls is not None:
            raise self.fail_calls
        results: list[dict[str, Any]] = []
        for entry in Records:
            if self.rng.random() < self.entry_failure_rate:
                results.append(
                    {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "x"}
                )
            else:
                self.stored.append((entry["PartitionKey"], entry["Data"]))
                results.append({"SequenceNumber": str(len(self.stored)), "ShardId": "shardId-0"})
        return {"FailedRecordCount": sum("ErrorCode" in r for r in results), "Records": results}

    async def describe_stream_summary(self, StreamName: str) -> dict[str, Any]:
        self.probes += 1
        if self.fail_calls is not None:
            raise self.fail_calls
        return {}


def records(lane: str, count: int, size: int = 10) -> list[Record]:
    return [
        Record(f"{lane}:{i}:".encode().ljust(size, b"."), lane, i, EventType.NEW_PROCESS)
        for i in range(count)
    ]


def make_sink(
    client: FakeKinesis, max_requests: int = 4, policy: RetryPolicy = NO_WAIT
) -> tuple[KinesisSink, Metrics]:
    metrics = Metrics(CollectorRegistry())
    return KinesisSink(client, "events", metrics, policy, max_requests), metrics  # type: ignore[arg-type]


def sequences_by_lane(stored: list[tuple[str, bytes]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for key, data in stored:
        out.setdefault(key, []).append(int(data.split(b":")[1]))
    return out


async def test_one_record_per_lane_per_request_and_order_under_failures() -> None:
    """With 30% of entries failing, every lane lands complete and in order, never twice in a request."""
    client = FakeKinesis(entry_failure_rate=0.3)
    sink, metrics = make_sink(client)
    lanes = {f"lane-{n}": records(f"lane-{n}", 8) for n in range(50)}
    await asyncio.gather(*(sink.publish(r) for r in lanes.values()))
    assert sequences_by_lane(client.stored) == {k: list(range(8)) for k in lanes}
    for request in client.requests:
        keys = Counter(entry["PartitionKey"] for entry in request)
        assert max(keys.values()) == 1
    assert metrics.registry.get_sample_value(
        "event_processor_retries_total", {"operation": "PutRecords"}
    )


async def test_metrics_count_what_kinesis_acknowledged() -> None:
    """Counted once per call, the figures still match record for record: published by type,
    failed entries by code, and nothing left in flight."""
    client = FakeKinesis(entry_failure_rate=0.3, seed=7)
    sink, metrics = make_sink(client)
    kinds = {"process": EventType.NEW_PROCESS, "network": EventType.NETWORK_CONNECTION}
    lanes = [
        [record._replace(event_type=kinds[kind]) for record in records(f"{kind}-{n}", 6)]
        for kind in kinds
        for n in range(40)
    ]
    await asyncio.gather(*(sink.publish(lane) for lane in lanes))
    stored = Counter(key.split("-")[0] for key, _ in client.stored)
    assert stored == {"process": 240, "network": 240}
    sample = metrics.registry.get_sample_value
    for kind, event_type in kinds.items():
        published = sample("event_processor_events_published_total", {"event_type": event_type})
        assert published == stored[kind]
    failed_entries = sum(len(r) for r in client.requests) - len(client.stored)
    assert failed_entries > 0
    failed = sample(
        "event_processor_put_records_failed_records_total",
        {"error_code": "ProvisionedThroughputExceededException"},
    )
    assert failed == failed_entries
    assert sample("event_processor_in_flight_records") == 0


async def test_requests_batch_across_lanes() -> None:
    """Concurrent lanes share requests: 600 one-record lanes need two requests, not 600."""
    client = FakeKinesis()
    sink, _ = make_sink(client, max_requests=1)
    client.gate = asyncio.Event()
    futures = [sink.publish(records(f"l{n}", 1)) for n in range(600)]
    await client.requested.wait()  # the first request is on the wire, held by the gate
    client.gate.set()
    await asyncio.gather(*futures)
    assert [len(r) for r in client.requests] == [1, 500, 99]


async def test_request_respects_five_mib() -> None:
    """A request never carries more than 5 MiB of data plus keys."""
    client = FakeKinesis()
    sink, _ = make_sink(client, max_requests=1)
    size = 600 * 1024
    await asyncio.gather(*(sink.publish(records(f"l{n}", 1, size=size)) for n in range(20)))
    for request in client.requests:
        total = sum(len(e["Data"]) + len(e["PartitionKey"]) for e in request)
        assert total <= constants.PUT_RECORDS_MAX_BYTES
    assert len(client.stored) == 20


async def test_non_retriable_error_fails_the_lane() -> None:
    """A ValidationException fails the lane with PublishFailed instead of spinning."""
    client = FakeKinesis()
    client.fail_calls = ClientError(
        {"Error": {"Code": "ValidationException", "Message": "no"}}, "PutRecords"
    )
    sink, _ = make_sink(client)
    with pytest.raises(PublishFailed, match="ValidationException"):
        await sink.publish(records("a", 2))


async def test_retry_policy_gives_up_after_its_attempts() -> None:
    """A record that keeps failing ends with PublishFailed once the policy's cap is hit."""
    client = FakeKinesis(entry_failure_rate=1.0)
    sink, _ = make_sink(client)
    sink._policy = NO_WAIT.with_limits(max_attempts=3, deadline_s=60)
    with pytest.raises(PublishFailed) as failure:
        await sink.publish(records("a", 1))
    assert failure.value.attempts == 3
    assert len(client.requests) == 3


async def test_abandoned_lane_stops_sending() -> None:
    """Cancelling a lane's future means its remaining records are never sent."""
    client = FakeKinesis()
    sink, metrics = make_sink(client, max_requests=1)
    client.gate = asyncio.Event()
    done = sink.publish(records("a", 5))
    await client.requested.wait()  # its head is on the wire, held by the gate
    done.cancel()
    client.gate.set()
    await sink.close()
    assert [k for k, _ in client.stored] == ["a"]  # only the head that was already on the wire
    assert metrics.registry.get_sample_value("event_processor_in_flight_records") == 0


async def test_health_follows_whole_call_failures_and_recovers() -> None:
    """Consecutive failed calls mark Kinesis down; the first success marks it up again."""
    client = FakeKinesis()
    client.fail_calls = EndpointConnectionError(endpoint_url="http://kinesis")
    sink, _ = make_sink(
        client, max_requests=1, policy=RetryPolicy(initial_s=0.001, max_backoff_s=0.001)
    )
    done = sink.publish(records("a", 3))
    await eventually(lambda: not sink.healthy, timeout_s=5, interval_s=0.001)
    assert not done.done()
    client.fail_calls = None
    await done
    assert sink.healthy
    assert sequences_by_lane(client.stored) == {"a": [0, 1, 2]}


async def test_wait_healthy_probes_when_idle() -> None:
    """With no lane left to find out, wait_healthy probes the stream itself."""
    client = FakeKinesis()
    client.fail_calls = EndpointConnectionError(endpoint_url="http://kinesis")
    sink, _ = make_sink(
        client, max_requests=1, policy=RetryPolicy(initial_s=0.001, max_backoff_s=0.001)
    )
    done = sink.publish(records("a", 1))
    await eventually(lambda: not sink.healthy, timeout_s=5, interval_s=0.001)
    done.cancel()
    await sink.close()  # no lane and no call left: only a probe can find Kinesis back
    client.fail_calls = None
    await asyncio.wait_for(sink.wait_healthy(probe_interval_s=0.01), timeout=5)
    assert sink.healthy
    assert client.probes == 1


async def test_empty_publish_resolves_at_once() -> None:
    """A submission with no valid events is done without a call."""
    client = FakeKinesis()
    sink, _ = make_sink(client)
    await sink.publish([])
    assert client.requests == []


class CappedKinesis(FakeKinesis):
    """Accepts at most `capacity` records per call and throttles the rest, like a full shard."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.throttled = 0

    async def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.requests.append(Records)
        results: list[dict[str, Any]] = []
        for i, entry in enumerate(Records):
            if i < self.capacity:
                self.stored.append((entry["PartitionKey"], entry["Data"]))
                results.append({"SequenceNumber": str(len(self.stored)), "ShardId": "shardId-0"})
            else:
                self.throttled += 1
                results.append(
                    {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "x"}
                )
        return {"FailedRecordCount": sum("ErrorCode" in r for r in results), "Records": results}


async def test_congestion_window_shrinks_to_the_capacity_and_bounds_retries() -> None:
    """Under a hard per-call cap, requests shrink to about the cap instead of re-sending 500s."""
    client = CappedKinesis(capacity=20)
    sink, _ = make_sink(
        client, max_requests=1, policy=RetryPolicy(initial_s=0.0, max_backoff_s=0.0)
    )
    await asyncio.gather(*(sink.publish(records(f"l{n}", 3)) for n in range(400)))
    assert sequences_by_lane(client.stored) == {f"l{n}": [0, 1, 2] for n in range(400)}
    later = client.requests[len(client.requests) // 2 :]
    assert max(len(r) for r in later) <= 2 * client.capacity
    # With the window disabled this run throttles 3,800 entries (every request carries all
    # ready lanes); with it 930: fewer than one retry per record. A minority of a request
    # throttled holds the window rather than cutting it, so some overshoot remains.
    assert client.throttled < 1200


async def test_a_few_throttled_entries_do_not_collapse_the_window() -> None:
    """A minority of throttled entries (a hot key) leaves request sizes alone."""
    client = FakeKinesis(entry_failure_rate=0.1)
    sink, _ = make_sink(client, max_requests=1)
    client.gate = asyncio.Event()
    futures = [sink.publish(records(f"l{n}", 2)) for n in range(1000)]
    await client.requested.wait()  # the first request is on the wire, held by the gate
    client.gate.set()
    await asyncio.gather(*futures)
    assert max(len(r) for r in client.requests[1:4]) == 500


async def test_oldest_submissions_finish_first_under_a_capped_stream() -> None:
    """With room for 20 records a call, lanes finish in the order they were received."""
    client = CappedKinesis(capacity=20)
    sink, _ = make_sink(client, max_requests=1)
    stored_at_finish: dict[int, int] = {}
    futures = []

    def finished(n: int) -> Callable[[object], object]:
        return lambda _: stored_at_finish.setdefault(n, len(client.stored))

    for n in range(100):
        future = sink.publish(records(f"l{n}", 5), received_at=float(n))
        future.add_done_callback(finished(n))
        futures.append(future)
    await asyncio.gather(*futures)
    # Oldest first, lane n is done once about the 5 (n + 1) records of lanes 0..n are stored,
    # give or take one window of lanes (20) advancing together: 5 x 20, plus a request.
    # Round-robin would finish every lane within the last 100 of the 500 records.
    late = {n: at for n, at in stored_at_finish.items() if at > 5 * (n + 1) + 120}
    assert late == {}


async def test_a_retried_lane_keeps_its_age() -> None:
    """A lane that failed and backed off goes before younger lanes when it is ready again."""
    client = FakeKinesis()
    sink, _ = make_sink(client, max_requests=1)
    client.gate = asyncio.Event()
    old = sink.publish(records("old", 2), received_at=0.0)
    await client.requested.wait()  # its first record is on the wire, held by the gate
    young = [sink.publish(records(f"y{n}", 1), received_at=1.0 + n) for n in range(3)]
    client.gate.set()
    await asyncio.gather(old, *young)
    order = [key for key, _ in client.stored]
    assert order.index("old") == 0
    assert order[1] == "old", "the old lane's second record goes before the younger lanes"


async def test_bytes_in_flight_are_bounded_across_requests() -> None:
    """Large records: requests in flight together stay within PUT_MAX_BYTES_IN_FLIGHT."""
    client = FakeKinesis()
    sink, _ = make_sink(client, max_requests=8)
    client.gate = asyncio.Event()
    size = 900 * 1024
    futures = [sink.publish(records(f"l{n}", 1, size=size)) for n in range(40)]
    # Every request the sink starts at once is on the wire, held by the gate, once the first
    # is: they were all created together, before this waiter was woken.
    await client.requested.wait()
    in_flight = sum(len(e["Data"]) + len(e["PartitionKey"]) for r in client.requests for e in r)
    assert in_flight <= constants.PUT_MAX_BYTES_IN_FLIGHT
    assert len(client.requests) >= 1
    client.gate.set()
    await asyncio.gather(*futures)
    assert len(client.stored) == 40


# --- order as Kinesis acknowledged it ----------------------------------------------------------

# The largest sequence number Kinesis can give (128 bits): 39 decimal digits.
MAX_SEQUENCE = 2**128 - 1


class AnsweringKinesis(FakeKinesis):
    """Stores everything and answers each stored record as `answer(n, key)` says: (shard,
    number) for the n-th record stored (from 0), of partition key `key`."""

    def __init__(self, answer: Callable[[int, str], tuple[str, str]]) -> None:
        super().__init__()
        self.answer = answer

    async def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.requests.append(Records)
        results: list[dict[str, Any]] = []
        for entry in Records:
            shard_id, sequence_number = self.answer(len(self.stored), entry["PartitionKey"])
            self.stored.append((entry["PartitionKey"], entry["Data"]))
            results.append({"SequenceNumber": sequence_number, "ShardId": shard_id})
        return {"FailedRecordCount": 0, "Records": results}


def counted(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(f"event_processor_{name}_total") or 0.0


@pytest.mark.parametrize(
    ("sequence_number", "previous"),
    [
        ("2", "1"),
        ("10", "9"),  # more digits: int() decides, not the strings' first characters
        (str(MAX_SEQUENCE), str(MAX_SEQUENCE - 1)),
        (str(2**127), str(2**127 - 1)),  # 39 digits against 39
        (str(10**38), str(10**38 - 1)),  # 39 digits against 38
        ("49650000000000000000000000000000000000000000000000000001", "4" * 56),
        ("010", "9"),  # a leading zero: the longer string is not always the greater
    ],
)
def test_sequence_after_agrees_with_integers(sequence_number: str, previous: str) -> None:
    """Decimal strings up to 128 bits compare as their integers, either way round."""
    assert int(sequence_number) > int(previous)
    assert sequence_after(sequence_number, previous)
    assert not sequence_after(previous, sequence_number)


def test_sequence_after_matches_int_on_random_128_bit_pairs() -> None:
    """Random pairs of every length up to 128 bits: the result is int(a) > int(b)."""
    rng = random.Random(21)
    for _ in range(5000):
        a, b = rng.getrandbits(rng.randint(1, 128)), rng.getrandbits(rng.randint(1, 128))
        if rng.random() < 0.1:
            b = a  # equal numbers are not in order
        assert sequence_after(str(a), str(b)) == (a > b), (a, b)


def test_sequence_after_counts_an_unreadable_number_as_out_of_order() -> None:
    """A sequence number int() cannot read is never taken as in order."""
    assert not sequence_after("12x", "9")


async def test_growing_sequence_numbers_count_no_violation_under_failures() -> None:
    """Kinesis's numbers grow as records are stored: 30% failed entries and retries break none."""
    client = FakeKinesis(entry_failure_rate=0.3, seed=5)
    sink, metrics = make_sink(client)
    await asyncio.gather(*(sink.publish(records(f"lane-{n}", 6)) for n in range(30)))
    assert len(client.stored) == 180
    assert counted(metrics, "order_violations") == 0
    assert counted(metrics, "lane_shard_changes") == 0


@pytest.mark.parametrize("offset", [-1, 0], ids=["lower", "equal"])
async def test_a_lower_or_equal_sequence_number_counts_and_logs_a_violation(
    offset: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The 3rd record of a lane answered at or below the 2nd: one violation, logged with the
    submission, the shard and both numbers; the lane still completes."""
    base = 2**127  # 39 digits: the strings' comparison, not int(), decides

    def answer(n: int, _: str) -> tuple[str, str]:
        return "shardId-000000000001", str(base + (1 + offset if n == 2 else n))

    client = AnsweringKinesis(answer)
    sink, metrics = make_sink(client)
    caplog.set_level(logging.INFO, logger="event_processor")
    await sink.publish(records("lane", 4), submission_id="sub-21")
    assert len(client.stored) == 4
    assert counted(metrics, "order_violations") == 1
    assert counted(metrics, "lane_shard_changes") == 0
    [line] = [r for r in caplog.records if getattr(r, "action", None) == "order_violation"]
    assert line.levelno == logging.WARNING
    assert line.__dict__["submission_id"] == "sub-21"
    assert line.__dict__["event_sequence"] == 2
    assert line.__dict__["shard_id"] == "shardId-000000000001"
    assert line.__dict__["previous_sequence_number"] == str(base + 1)
    assert line.__dict__["sequence_number"] == str(base + 1 + offset)


async def test_a_lane_moved_to_another_shard_counts_a_shard_change_not_a_violation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a reshard the lane's records land on a child shard whose numbers start low: one
    shard change, logged at INFO, and no violation; order is checked again on the child."""

    def answer(n: int, _: str) -> tuple[str, str]:
        # Parent: large numbers; from the 3rd record on, a child that numbers from 1.
        return (
            ("shardId-000000000000", str(MAX_SEQUENCE - 10 + n))
            if n < 2
            else (
                "shardId-000000000002",
                str(n - 1),
            )
        )

    client = AnsweringKinesis(answer)
    sink, metrics = make_sink(client)
    caplog.set_level(logging.INFO, logger="event_processor")
    await sink.publish(records("lane", 5), submission_id="sub-7")
    assert counted(metrics, "lane_shard_changes") == 1
    assert counted(metrics, "order_violations") == 0
    [line] = [r for r in caplog.records if getattr(r, "action", None) == "lane_shard_change"]
    assert line.levelno == logging.INFO
    assert line.__dict__["previous_shard_id"] == "shardId-000000000000"
    assert line.__dict__["shard_id"] == "shardId-000000000002"
    assert line.__dict__["submission_id"] == "sub-7"


async def test_lanes_are_checked_apart() -> None:
    """Lanes share a shard: a record below another lane's predecessor is no violation, since
    order is promised per submission only."""
    stored: Counter[str] = Counter()

    def answer(n: int, key: str) -> tuple[str, str]:
        # Lane "a" numbers from 100, lane "b" from 10: every b record is below a's last one.
        stored[key] += 1
        return "shardId-000000000000", str((100 if key == "a" else 10) + stored[key])

    client = AnsweringKinesis(answer)
    sink, metrics = make_sink(client)
    await asyncio.gather(sink.publish(records("a", 5)), sink.publish(records("b", 5)))
    assert len(client.stored) == 10
    assert counted(metrics, "order_violations") == 0


async def test_an_answer_without_shard_or_number_is_not_checked() -> None:
    """A stand-in that leaves ShardId and SequenceNumber out: published, nothing counted."""
    client = AnsweringKinesis(lambda n, _: ("shardId-000000000000", str(n)))
    answer = client.put_records

    async def bare(StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        response = await answer(StreamName, Records)
        return {**response, "Records": [{} for _ in Records]}

    client.put_records = bare  # type: ignore[method-assign]
    sink, metrics = make_sink(client)
    async with asyncio.timeout(10):  # a KeyError in the sink would leave the lane hanging
        await sink.publish(records("lane", 3))
    assert len(client.stored) == 3
    assert counted(metrics, "order_violations") == 0
    assert counted(metrics, "lane_shard_changes") == 0
