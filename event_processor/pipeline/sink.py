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
* records in flight are bounded by a congestion window, as TCP bounds bytes in flight:
  it is cut when most of a request comes back ProvisionedThroughputExceeded and grows back
  while requests go through, so under throttling the sink settles at the shards' rate
  rather than retrying into it;
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
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from event_processor import constants
from event_processor.contract.records import Record, Records
from event_processor.contract.rules import EventType
from event_processor.errors import THROTTLE_CODES, PublishFailed, error_code, is_retriable
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


class _Listed:
    """A list of built records seen as `Records` (tests and tools publish lists)."""

    __slots__ = ("_records",)

    def __init__(self, records: list[Record]) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Record:
        return self._records[index]

    def size(self, index: int) -> int:
        return self._records[index].size


class Lane:
    """One submission's records; only its head is ever in flight.

    Lanes are served oldest first: `received_at` is when the submission was received (and
    `opened` breaks ties), and a lane keeps it through retries, so under a slow stream
    submissions finish one after another instead of all advancing a record per round and
    finishing together.
    """

    __slots__ = (
        "backoff",
        "count",
        "done",
        "next",
        "opened",
        "received_at",
        "records",
        "sequence_number",
        "shard_id",
        "submission_id",
    )

    def __init__(
        self,
        records: Records,
        done: asyncio.Future[None],
        received_at: float,
        opened: int,
        submission_id: str = "",
    ) -> None:
        self.records = records
        self.count = len(records)  # asked once: `left` runs once per record acknowledged
        self.next = 0  # index of the head: records before it are acknowledged
        self.done = done
        self.received_at = received_at
        self.opened = opened
        self.backoff: Backoff | None = None  # created on the first failure only
        self.submission_id = submission_id  # for the logs only
        # Where Kinesis put the last acknowledged record: its successor is checked against it.
        self.shard_id: str | None = None
        self.sequence_number = ""

    @property
    def left(self) -> int:
        return self.count - self.next


class KinesisSink:
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
        # Ready lanes, oldest submission first: a heap of (received_at, opened, lane), flat.
        # `opened` is unique, so the heap compares the tuples in C and never two lanes (a
        # Python __lt__ on Lane ran ~10 times per push or pop: ~0.3 us more per record), and
        # one flat tuple compares in one step, where ((received_at, opened), lane) took two.
        self._ready: list[tuple[float, int, Lane]] = []
        self._opened = itertools.count()  # ties between submissions received together
        self._bytes_in_flight = 0
        self._active = 0
        self._lanes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._failed_calls = 0
        # Records in flight, bounded by a congestion window (see _adapt): it halves when
        # Kinesis answers ProvisionedThroughputExceeded and grows back while requests go
        # through, so the sink settles at the shards' rate instead of retrying into it.
        self._max_window = float(constants.PUT_RECORDS_MAX_RECORDS * max_requests)
        self._window = self._max_window
        metrics.put_window_records.set(self._window)
        self._records_in_flight = 0
        self._last_cut = float("-inf")  # no cut yet
        self._healthy = asyncio.Event()
        self._healthy.set()
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
            records = _Listed(records)
        lane = Lane(
            records,
            done,
            self._clock() if received_at is None else received_at,
            next(self._opened),
            submission_id,
        )
        self._make_ready(lane)
        self._lanes += 1
        self._metrics.in_flight_records.inc(len(records))
        done.add_done_callback(lambda _: self._lane_finished(lane))
        self._kick()
        return done

    @property
    def healthy(self) -> bool:
        """False while whole PutRecords calls keep failing (Kinesis down or unreachable)."""
        return self._healthy.is_set()

    async def wait_healthy(self, probe_interval_s: float) -> None:
        """Block while Kinesis is down; probe it ourselves when no lane is left to find out."""
        while not self._healthy.is_set():
            if self._lanes == 0:
                await self._probe()
            if self._healthy.is_set():
                return
            try:
                async with asyncio.timeout(probe_interval_s):
                    await self._healthy.wait()
            except TimeoutError:
                continue

    async def close(self, timeout_s: float = constants.SINK_CLOSE_TIMEOUT_S) -> None:
        """Stop sending; give requests on the wire `timeout_s` to answer, then cancel them.

        Waiting first keeps duplicates down after a release. Cancelling after the timeout
        cannot break order: a record of ours that still lands was sent after its
        predecessor was acknowledged, so first occurrences stay in order.
        """
        self._closed = True  # pending backoff timers find it and do nothing
        while self._ready:
            heapq.heappop(self._ready)[2].done.cancel()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # --- sending ---------------------------------------------------------------------

    def _kick(self) -> None:
        while self._ready and self._active < self._max_requests and not self._closed:
            # Room left in the congestion window; one record may always go when none is out.
            room = max(int(self._window) - self._records_in_flight, int(self._active == 0))
            full = min(room, constants.PUT_RECORDS_MAX_RECORDS)
            if full < 1:
                return
            if len(self._ready) < full and self._active >= constants.PUT_PARTIAL_REQUESTS:
                # Fewer, fuller calls: a partial request waits for one in flight to return;
                # the lanes it brings back join the next request.
                return
            batch, nbytes = self._take(full)
            if not batch:
                return
            self._active += 1
            self._records_in_flight += len(batch)
            self._bytes_in_flight += nbytes
            task = asyncio.create_task(
                self._send(
                    batch,
                    nbytes,
                    window_limited=room <= len(batch),
                    outstanding=self._records_in_flight,
                )
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self, limit: int) -> tuple[list[Lane], int]:
        """Heads of the oldest ready lanes, one per lane, within `limit` and the byte limits.

        A request carries at most 5 MiB, and all requests in flight together at most
        PUT_MAX_BYTES_IN_FLIGHT (one request may always go when none is out).
        """
        batch: list[Lane] = []
        total = 0
        ready = self._ready
        room = constants.PUT_MAX_BYTES_IN_FLIGHT - self._bytes_in_flight
        max_bytes = min(constants.PUT_RECORDS_MAX_BYTES, room if self._active else 1 << 62)
        while ready and len(batch) < limit:
            lane = ready[0][2]
            if lane.done.done():  # abandoned (shutdown) while waiting: drop it
                heapq.heappop(ready)
                continue
            size = lane.records.size(lane.next)
            if total + size > max_bytes and (batch or self._active):
                break
            total += size
            batch.append(heapq.heappop(ready)[2])
            if total >= constants.PUT_RECORDS_MAX_BYTES:
                break
        return batch, total

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
            self._call_failed(exc)
            code = error_code(exc)
            retriable = is_retriable(exc)
            throttled = len(batch) if code in THROTTLE_CODES else 0
            self._adapt(
                len(batch),
                0,
                throttled,
                sent_at,
                window_limited=window_limited,
                outstanding=outstanding,
                timed_out=isinstance(exc, ReadTimeoutError),
            )
            self._metrics.put_records_failed.labels(code).inc(len(batch))
            for lane in batch:
                self._retry_later(lane, code, retriable)
        else:
            self._call_succeeded()
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
            self._adapt(
                len(batch),
                accepted,
                throttled,
                sent_at,
                window_limited=window_limited,
                outstanding=outstanding,
            )
        finally:
            self._active -= 1
            self._records_in_flight -= len(batch)
            self._bytes_in_flight -= nbytes
            self._kick()

    def _adapt(
        self,
        size: int,
        accepted: int,
        throttled: int,
        sent_at: float,
        *,
        window_limited: bool,
        outstanding: int,
        timed_out: bool = False,
    ) -> None:
        """A congestion window on records in flight, as TCP keeps one on bytes in flight.

        When most of a request was throttled, the shards are full: cut the window to what
        they just accepted (at most half of it). When a call was slow (or timed out), the
        stream is congested even if it says nothing: cut the window to the share of what
        was in flight with it that would have answered within PUT_TARGET_LATENCY_S, so
        calls get smaller and fewer until they are fast again; a timed-out call may have
        landed and will be resent, which is a duplicate, so slowness must be cut before it
        becomes time-outs. Each cut happens at most once per round trip, since requests sent
        before the last cut were sized by the old window and say nothing new. A few
        throttled entries (a hot key, a blip) only stop the growth: their lanes back off on
        their own. Grow by half of what went through, and only when the window held the
        request back: an idle sink proves nothing about capacity.
        """
        now = self._clock()
        elapsed = now - sent_at
        if throttled * 2 >= size:
            if sent_at > self._last_cut:
                self._window = max(1.0, min(self._window / 2, float(accepted)))
                self._last_cut = now
        elif timed_out or elapsed > constants.PUT_TARGET_LATENCY_S:
            if sent_at > self._last_cut:
                share = constants.PUT_LATENCY_CUT_MIN
                if not timed_out:
                    share = max(share, constants.PUT_TARGET_LATENCY_S / elapsed)
                self._window = max(1.0, min(self._window, float(outstanding)) * share)
                self._last_cut = now
                self._metrics.put_congestion_cuts.inc()
        elif not throttled and window_limited:
            self._window = min(self._max_window, self._window + size / 2)
        self._metrics.put_window_records.set(self._window)

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
            self._make_ready(lane)
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
        # It keeps its age, so it goes before every younger lane (aiokafka puts a failed
        # batch back at the head of its queue for the same reason).
        self._make_ready(lane)
        self._kick()

    def _make_ready(self, lane: Lane) -> None:
        """The ready heap's one entry shape: (received_at, opened, lane), oldest first."""
        heapq.heappush(self._ready, (lane.received_at, lane.opened, lane))

    def _lane_finished(self, lane: Lane) -> None:
        self._lanes -= 1
        # Records never acknowledged (failed or abandoned lane) leave the gauge with it.
        left = lane.left
        if left:
            self._metrics.in_flight_records.dec(left)

    # --- health ----------------------------------------------------------------------

    def _call_failed(self, exc: BaseException) -> None:
        self._failed_calls += 1
        if (
            self._healthy.is_set()
            and self._failed_calls >= constants.SINK_UNHEALTHY_AFTER_FAILED_CALLS
        ):
            self._healthy.clear()
            log.warning(
                "kinesis unavailable", extra={"action": "sink_down", "error": error_code(exc)}
            )

    def _call_succeeded(self) -> None:
        self._failed_calls = 0
        if not self._healthy.is_set():
            self._healthy.set()
            log.warning("kinesis available again", extra={"action": "sink_up"})

    async def _probe(self) -> None:
        try:
            with self._metrics.aws_call("DescribeStreamSummary"):
                await self._client.describe_stream_summary(StreamName=self._stream_name)
        except (BotoCoreError, ClientError):
            return
        self._call_succeeded()
