"""Kinesis sink: ordered per submission, batched across submissions.

Why lanes. PutRecords is not ordered: one entry of a request can fail (throttled) while a
later entry of the same request succeeds, so two records of one submission in one request
can land out of order, and retrying the failed one puts it behind its successor. PutRecord
per event is ordered but costs one round trip per event. The sink does better than both:

* every in-flight submission is a *lane*: a queue of its records, in body order;
* a PutRecords request carries **at most one record per lane** (the lane's head), and a lane
  with a record in flight is *muted* (aiokafka's word) until the response comes back;
* on success the head is popped and the lane becomes ready again; on failure the head stays
  where it is and the lane sits out a backoff (tenacity's exponential jitter), then rejoins
  the front of the ready queue. Only failed lanes wait: the others keep moving;
* records in flight are bounded by a congestion window (congestion.py), as TCP bounds
  bytes in flight: it is cut when most of a request comes back
  ProvisionedThroughputExceeded, or comes back slowly, and grows back while requests go
  through, so under throttling the sink settles at the shards' rate rather than retrying
  into it;
* requests take ready lanes up to Kinesis's 500 records / 5 MiB; full requests go at once,
  up to `max_requests` in flight, and a partial one only while fewer than
  PUT_PARTIAL_REQUESTS are out: meanwhile ready lanes pile up, so calls stay few and full
  under load, and an idle sink still sends a lone record at once (no linger timer).

So a record is sent only after its predecessor is acknowledged, which is what makes the
stream order per submission hold, and each request still carries hundreds of records when
hundreds of submissions are in flight. Throughput comes from the number of lanes, latency
is paid once per event position, not once per event.

Order observed. That design relies on Kinesis ordering what it accepts one after the other,
which AWS states only coarsely ("coarsely ordered based on arrival time" without
SequenceNumberForOrdering). Every acknowledged record comes back with its ShardId and
SequenceNumber, so each lane checks its own: on the same shard as its predecessor, a record's
sequence number must be greater, or it counts as an order violation. A record on another
shard is a reshard, not a violation: the lane's partition key hashes to one open shard at a
time, so its records can only move when that shard was split or merged into a child, whose
numbers are not comparable with the parent's; those are counted apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from event_processor import constants
from event_processor.contract.records import Record, Records
from event_processor.contract.rules import EventType
from event_processor.errors import THROTTLE_CODES, PublishFailed, error_code, is_retriable
from event_processor.pipeline.congestion import Change, CongestionWindow
from event_processor.pipeline.health import StreamHealth
from event_processor.pipeline.lanes import Lane, ListedRecords, ReadyLanes
from event_processor.retry import Backoff, RetryPolicy

if TYPE_CHECKING:
    from types_aiobotocore_kinesis.type_defs import (
        PutRecordsRequestEntryTypeDef,
        PutRecordsResultEntryTypeDef,
    )

    from event_processor.aws.ports import KinesisApi
    from event_processor.metrics import Metrics

log = logging.getLogger(__name__)


def sequence_after(sequence_number: str, previous: str) -> bool:
    """True when decimal string `sequence_number` is a greater integer than `previous`.

    Kinesis's sequence numbers are decimal strings of up to 128 bits. Two of one length
    compare as their integers do, and one shard's numbers nearly always have one length, so
    int() runs only when the lengths differ (leading zeros would fool a length comparison).
    Strings of different lengths that int() cannot read count as out of order, to be seen.
    """
    if len(sequence_number) == len(previous):
        return sequence_number > previous
    try:
        return int(sequence_number) > int(previous)
    except ValueError:
        return False


def _placed(lane: Lane, shard_id: str, sequence_number: str) -> dict[str, object]:
    """Log fields placing a lane's head, just acknowledged, and its predecessor in the stream."""
    return {
        "submission_id": lane.submission_id,
        "event_sequence": lane.records[lane.next].sequence,  # the record's `sequence` field
        "previous_shard_id": lane.shard_id,
        "shard_id": shard_id,
        "previous_sequence_number": lane.sequence_number,
        "sequence_number": sequence_number,
    }


class KinesisSink:
    """The face the pipeline publishes to, and the sender: it decides when a request goes
    (the window's room, the partial-request rule, bytes in flight) and what each answer does
    to each lane. The lanes are lanes.py's, the window congestion.py's, the health health.py's.
    """

    def __init__(
        self,
        client: KinesisApi,
        stream_name: str,
        metrics: Metrics,
        policy: RetryPolicy,
        max_requests: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._clock = clock  # monotonic seconds: call latencies and lane ages
        self._stream_name = stream_name
        self._metrics = metrics
        # Records retry until Kinesis is back or the (long) publish deadline passes.
        self._policy = policy.for_records()
        self._max_requests = max_requests
        self._ready = ReadyLanes()
        self._bytes_in_flight = 0
        self._active = 0
        self._lanes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._window = CongestionWindow(
            constants.PUT_RECORDS_MAX_RECORDS * max_requests, clock=clock
        )
        metrics.put_window_records.set(self._window.records)
        self._health = StreamHealth(self._probe)
        # Labelled children resolved once: labels() takes a lock and a dict lookup per call.
        self._published = {t: metrics.events_published.labels(t.value) for t in EventType}

    # --- the public face -------------------------------------------------------------

    def publish(
        self,
        records: Records | list[Record],
        received_at: float | None = None,
        submission_id: str = "",
    ) -> asyncio.Future[None]:
        """Queue a submission's records as one lane, in turn by `received_at` (monotonic);
        `submission_id` names the lane in the logs.

        The future resolves when every record is acknowledged, fails with PublishFailed when
        the retry policy gives up, and cancelling it abandons the lane's unsent records.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not records:
            done.set_result(None)
            return done
        if self._closed:
            done.set_exception(RuntimeError("sink is closed"))
            return done
        if isinstance(records, list):
            records = ListedRecords(records)
        lane = self._ready.open(
            records, done, self._clock() if received_at is None else received_at, submission_id
        )
        self._lanes += 1
        self._metrics.in_flight_records.inc(len(records))
        done.add_done_callback(lambda _: self._lane_finished(lane))
        self._kick()
        return done

    @property
    def healthy(self) -> bool:
        """False while whole PutRecords calls keep failing (Kinesis down or unreachable)."""
        return self._health.healthy

    async def wait_healthy(self, probe_interval_s: float) -> None:
        """Block while Kinesis is down; probe it ourselves when no lane is left to find out."""
        await self._health.wait(probe_interval_s, idle=lambda: self._lanes == 0)

    async def close(self, timeout_s: float = constants.SINK_CLOSE_TIMEOUT_S) -> None:
        """Stop sending; give requests on the wire `timeout_s` to answer, then cancel them.

        Waiting first keeps duplicates down after a release. Cancelling after the timeout
        cannot break order: a record of ours that still lands was sent after its
        predecessor was acknowledged, so first occurrences stay in order.
        """
        self._closed = True  # pending backoff timers find it and do nothing
        self._ready.abandon()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # --- sending ---------------------------------------------------------------------

    def _kick(self) -> None:
        """Send what the window, the limits and the ready lanes allow now."""
        while self._ready and self._active < self._max_requests and not self._closed:
            room = self._window.room()
            full = min(room, constants.PUT_RECORDS_MAX_RECORDS)
            if full < 1:
                return
            if len(self._ready) < full and self._active >= constants.PUT_PARTIAL_REQUESTS:
                # Fewer, fuller calls: a partial request waits for one in flight to return;
                # the lanes it brings back join the next request.
                return
            # A request carries at most 5 MiB, and all requests in flight together at most
            # PUT_MAX_BYTES_IN_FLIGHT; one request may always go when none is out.
            max_bytes = constants.PUT_RECORDS_MAX_BYTES
            if self._active:
                max_bytes = min(
                    max_bytes, constants.PUT_MAX_BYTES_IN_FLIGHT - self._bytes_in_flight
                )
            batch, nbytes = self._ready.take(full, max_bytes, first_always=not self._active)
            if not batch:
                return
            self._active += 1
            outstanding = self._window.sent(len(batch))
            self._bytes_in_flight += nbytes
            task = asyncio.create_task(
                self._send(
                    batch, nbytes, window_limited=room <= len(batch), outstanding=outstanding
                )
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(
        self, batch: list[Lane], nbytes: int, *, window_limited: bool, outstanding: int
    ) -> None:
        """One PutRecords of the lanes' heads; `outstanding` records were in flight with it."""
        sent_at = self._clock()
        # Records are built here, when sent: until then a lane holds only its packed events.
        heads = [lane.records[lane.next] for lane in batch]
        entries: list[PutRecordsRequestEntryTypeDef] = [
            {"Data": record.data, "PartitionKey": record.partition_key} for record in heads
        ]
        try:
            with self._metrics.aws_call("PutRecords"):
                response = await self._client.put_records(
                    StreamName=self._stream_name, Records=entries
                )
        except (BotoCoreError, ClientError) as exc:
            code = error_code(exc)
            self._health.call_failed(code)
            retriable = is_retriable(exc)
            throttled = len(batch) if code in THROTTLE_CODES else 0
            change = self._window.answered(
                len(batch),
                0,
                throttled,
                sent_at,
                window_limited=window_limited,
                outstanding=outstanding,
                timed_out=isinstance(exc, ReadTimeoutError),
            )
            self._window_changed(change)
            self._metrics.put_records_failed.labels(code).inc(len(batch))
            for lane in batch:
                self._retry_later(lane, code, retriable)
        else:
            self._health.call_succeeded()
            throttled = 0
            accepted = len(batch) - response.get("FailedRecordCount", 0)
            # Metrics once per call, not once per record: the same figures, a fraction of
            # the cost (each update takes the metric's lock).
            published = dict.fromkeys(self._published, 0)
            in_flight = 0
            for lane, head, result in zip(batch, heads, response["Records"], strict=True):
                failed = result.get("ErrorCode")
                if failed is None:
                    published[head.event_type] += 1
                    in_flight += self._acknowledged(lane, result)
                else:
                    throttled += failed in THROTTLE_CODES
                    self._metrics.put_records_failed.labels(failed).inc()
                    self._retry_later(lane, failed, retriable=True)
            for event_type, count in published.items():
                if count:
                    self._published[event_type].inc(count)
            if in_flight:
                self._metrics.in_flight_records.dec(in_flight)
            change = self._window.answered(
                len(batch),
                accepted,
                throttled,
                sent_at,
                window_limited=window_limited,
                outstanding=outstanding,
            )
            self._window_changed(change)
        finally:
            self._active -= 1
            self._window.returned(len(batch))
            self._bytes_in_flight -= nbytes
            self._kick()

    def _window_changed(self, change: Change) -> None:
        """The window's size, and its cuts for slowness, are metrics."""
        if change is Change.SLOW_CUT:
            self._metrics.put_congestion_cuts.inc()
        self._metrics.put_window_records.set(self._window.records)

    def _acknowledged(self, lane: Lane, result: PutRecordsResultEntryTypeDef) -> int:
        """Check where the lane's head landed, pop it; 1 if it still counts in the in-flight
        gauge, else 0."""
        try:
            shard_id = result["ShardId"]
            sequence_number = result["SequenceNumber"]
        except KeyError:
            pass  # an accepted record always has both; a stand-in may give neither
        else:
            previous = lane.sequence_number
            if shard_id != lane.shard_id:
                if lane.shard_id is not None:
                    self._shard_changed(lane, shard_id, sequence_number)
            elif (
                # sequence_after's common case inlined, as this runs once per record
                sequence_number <= previous
                if len(sequence_number) == len(previous)
                else not sequence_after(sequence_number, previous)
            ):
                self._order_violated(lane, shard_id, sequence_number)
            lane.shard_id = shard_id
            lane.sequence_number = sequence_number
        lane.next += 1
        if lane.done.done():  # abandoned meanwhile: the gauge already let go of its records
            return 0
        lane.backoff = None  # the policy's attempts and deadline are per record
        if lane.next < lane.count:
            self._ready.push(lane)
        else:
            lane.done.set_result(None)
        return 1

    def _order_violated(self, lane: Lane, shard_id: str, sequence_number: str) -> None:
        """The head landed at or below its predecessor on the same shard: stream order broke."""
        self._metrics.order_violations.inc()
        log.warning(
            "stream order violated",
            extra={"action": "order_violation", **_placed(lane, shard_id, sequence_number)},
        )

    def _shard_changed(self, lane: Lane, shard_id: str, sequence_number: str) -> None:
        """The head landed on another shard than its predecessor: the stream was resharded."""
        self._metrics.lane_shard_changes.inc()
        log.info(
            "lane moved to another shard",
            extra={"action": "lane_shard_change", **_placed(lane, shard_id, sequence_number)},
        )

    def _retry_later(self, lane: Lane, code: str, retriable: bool) -> None:
        if lane.done.done():
            return
        if lane.backoff is None:
            lane.backoff = Backoff(self._policy.retrying())
        delay = lane.backoff.next_delay() if retriable else None
        if delay is None:
            lane.done.set_exception(PublishFailed(code, lane.backoff.attempts))
            return
        self._metrics.retries.labels("PutRecords").inc()
        asyncio.get_running_loop().call_later(delay, self._requeue, lane)

    def _requeue(self, lane: Lane) -> None:
        if lane.done.done() or self._closed:
            return
        self._ready.push(lane)  # with its age: before every younger lane
        self._kick()

    def _lane_finished(self, lane: Lane) -> None:
        self._lanes -= 1
        # Records never acknowledged (failed or abandoned lane) leave the gauge with it.
        left = lane.left
        if left:
            self._metrics.in_flight_records.dec(left)

    # --- health ----------------------------------------------------------------------

    async def _probe(self) -> bool:
        """One DescribeStreamSummary: True when Kinesis answered it."""
        try:
            with self._metrics.aws_call("DescribeStreamSummary"):
                await self._client.describe_stream_summary(StreamName=self._stream_name)
        except (BotoCoreError, ClientError):
            return False
        return True
