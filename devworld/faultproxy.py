"""An HTTP fault proxy between the daemon and the emulator, in the style of aiobotocore's tests.

Development tooling, like emulator.py: the tests use it to inject faults and the benchmark
(`bench/`) to add a fixed per-call latency, because on loopback every strategy looks the same.

An aiohttp server runs in a background thread with its own event loop, on 127.0.0.1 and a
free port. Every request is forwarded to the emulator (moto) and the response relayed, unless
a fault says otherwise. botocore speaks the JSON protocol to SQS and Kinesis, so the operation
is the `X-Amz-Target` header (`Kinesis_20131202.PutRecords`, `AmazonSQS.ReceiveMessage`...).

Faults can be changed at any time from any thread:

* `put_records_entry_failure_rate`: before forwarding a PutRecords, a random subset of its
  entries is cut out of the request; the rest is forwarded and the cut entries are spliced back
  into the response as ProvisionedThroughputExceededException entries. A "failed" entry is
  therefore really not stored, as with Kinesis.
* `throttle_rate`: a whole Kinesis call is answered with HTTP 400 throttling, not forwarded.
* `sqs_error_rate`: an SQS call is answered with HTTP 500 InternalError, not forwarded (the
  request never reaches the queue, so a failed receive hides no message).
* `kinesis_down` / `sqs_down`: every call of that service fails, with HTTP 500 or, if
  `down_mode` is "reset", with the connection dropped without an answer.
* `fail_operations`: calls of these operations (e.g. {"ReceiveMessage"}) fail with HTTP 500,
  not forwarded.
* `queues_down`: SQS calls naming one of these queue URLs (the request's `QueueUrl`) are
  answered HTTP 503 ServiceUnavailable, not forwarded: one queue is down (the DLQ, say) while
  the others answer.
* `failing_partition_keys`: PutRecords entries with one of these partition keys are cut out
  and answered as failed entries (InternalFailure), like the entry failures above but for
  chosen records: one submission's records fail while the others go.
* `latency_s`: every call waits this long before it is handled, like an in-region round trip.
* `shard_records_per_s` / `shard_bytes_per_s`: per-shard token buckets (burst = one second's
  worth). A PutRecords entry whose shard has no token left is answered, per record, with
  ProvisionedThroughputExceededException, as Kinesis does; the others are forwarded.
* `receive_delay_s`: a ReceiveMessage answer is held this long after the emulator gave it (its
  messages are already invisible), as a slow network would.
* `sequence_inversions`: the next N stored PutRecords entries whose partition key was stored
  before on the same shard are answered with a sequence number one below that earlier
  record's (the record itself is stored as it came), as a stream that broke order would.
* `shard_moves`: the next N partition keys stored again are answered from then on with a
  shard id of their own (`shardId-0000000010NN`), as after a reshard into a child shard.
  Both fault kinds follow partition keys, so drive them with one submission per key.

The three rates draw from one seeded stream each, so the n-th Kinesis call (or SQS call, or
PutRecords entry) after a rate is set meets the same fate on every run with the same seed.

Counters (`calls`, `injected`, `forwarded`) let a test assert that the faults really happened;
`pending` tells which forwarded calls have not been answered yet, and `dropped` which lost their
connection to the emulator (the client's connection is then dropped too, without an answer).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import TracebackType
from typing import Any, Literal

import aiohttp
from aiohttp import web

# Injected-fault kinds, the keys of `FaultProxy.injected()`.
ENTRY_FAILURE = "put_records_entry_failure"  # counted per entry, not per call
THROTTLE = "kinesis_throttle"
SQS_ERROR = "sqs_error"
KINESIS_DOWN = "kinesis_down"
SQS_DOWN = "sqs_down"
OPERATION_FAILED = "operation_failed"
QUEUE_DOWN = "queue_down"
RECEIVE_DELAYED = "receive_delayed"
SHARD_THROTTLED = "shard_throttled"  # counted per entry
SEQUENCE_INVERTED = "sequence_inverted"  # counted per entry
SHARD_MOVED = "shard_moved"  # counted per partition key moved
KEY_FAILURE = "put_records_key_failure"  # counted per entry
_RANDOM_FAULTS = (ENTRY_FAILURE, THROTTLE, SQS_ERROR)

KINESIS_PREFIX = "Kinesis_20131202."
SQS_PREFIX = "AmazonSQS."
_KINESIS_CONTENT_TYPE = "application/x-amz-json-1.1"
_SQS_CONTENT_TYPE = "application/x-amz-json-1.0"

# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp recomputes for the bytes it sends.
_SKIP_REQUEST_HEADERS = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade"}
)
_SKIP_RESPONSE_HEADERS = frozenset(
    {
        "content-length",
        "content-encoding",  # the client session decompresses what it relays
        "connection",
        "keep-alive",
        "transfer-encoding",
        "date",
        "server",
    }
)

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 15.0
# Long polls last up to 20 s; give the upstream call that and some room.
_UPSTREAM_TIMEOUT_S = 60.0
# In-flight handlers get this long to finish on stop (long polls in tests wait 1 s).
_SHUTDOWN_TIMEOUT_S = 5.0

DownMode = Literal["500", "reset"]


@dataclass(frozen=True, slots=True)
class Faults:
    """The fault settings; a proxy holds one immutable value and swaps it under a lock."""

    put_records_entry_failure_rate: float = 0.0
    throttle_rate: float = 0.0
    sqs_error_rate: float = 0.0
    kinesis_down: bool = False
    sqs_down: bool = False
    down_mode: DownMode = "500"
    fail_operations: frozenset[str] = frozenset()
    queues_down: frozenset[str] = frozenset()
    failing_partition_keys: frozenset[str] = frozenset()
    receive_delay_s: float = 0.0
    latency_s: float = 0.0
    # Per-shard token buckets, as Kinesis enforces them (1,000 records/s and 1 MiB/s per
    # shard in AWS); 0 turns a limit off. Needs the stream's shard count to map keys.
    shard_records_per_s: float = 0.0
    shard_bytes_per_s: float = 0.0
    shard_count: int = 2
    # Answers rewritten after the emulator stored the records; counted down as they are used.
    sequence_inversions: int = 0
    shard_moves: int = 0


_FAULT_NAMES = frozenset(f.name for f in fields(Faults))


class _Reset(Exception):
    """Raised inside the handler to drop the client's connection without an answer."""


class FaultProxy:
    """Forward AWS JSON-protocol calls to `target_url`, injecting the configured faults."""

    def __init__(self, target_url: str, *, seed: int = 0) -> None:
        self._target_url = target_url.rstrip("/")
        self._lock = threading.Lock()
        self._faults = Faults()
        # One stream of draws per random fault: the n-th Kinesis call after a rate is set meets
        # the same fate whatever the SQS calls and batch sizes around it were, so a test with a
        # fixed seed sees the same schedule on every run (a shared stream made it interleaving-
        # dependent: one CI run drew no throttle in 30 PutRecords at a 10% rate).
        self._rngs = {kind: random.Random(f"{seed}/{kind}") for kind in _RANDOM_FAULTS}
        self._calls: Counter[str] = Counter()
        self._forwarded: Counter[str] = Counter()
        self._injected: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        # shard index -> (record tokens, byte tokens, last refill on the monotonic clock)
        self._buckets: dict[int, tuple[float, float, float]] = {}
        # partition key -> (shard id, sequence number) last answered, while answers are
        # rewritten; and the keys moved to a shard of their own -> that shard's id.
        self._answered: dict[str, tuple[str, str]] = {}
        self._moved: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._port: int | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- faults, settable from any thread ---------------------------------------------

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def configure(self, **changes: Any) -> None:
        """Change several faults at once, e.g. configure(throttle_rate=0.1, sqs_down=True)."""
        unknown = set(changes) - _FAULT_NAMES
        if unknown:
            raise TypeError(f"unknown faults: {sorted(unknown)}")
        with self._lock:
            self._faults = replace(self._faults, **changes)

    def clear(self) -> None:
        """No faults from now on (moved keys go back to their shard); the counters are kept."""
        with self._lock:
            self._faults = Faults()
            self._answered.clear()
            self._moved.clear()

    @property
    def put_records_entry_failure_rate(self) -> float:
        return self.faults.put_records_entry_failure_rate

    @put_records_entry_failure_rate.setter
    def put_records_entry_failure_rate(self, value: float) -> None:
        self.configure(put_records_entry_failure_rate=value)

    @property
    def throttle_rate(self) -> float:
        return self.faults.throttle_rate

    @throttle_rate.setter
    def throttle_rate(self, value: float) -> None:
        self.configure(throttle_rate=value)

    @property
    def sqs_error_rate(self) -> float:
        return self.faults.sqs_error_rate

    @sqs_error_rate.setter
    def sqs_error_rate(self, value: float) -> None:
        self.configure(sqs_error_rate=value)

    @property
    def kinesis_down(self) -> bool:
        return self.faults.kinesis_down

    @kinesis_down.setter
    def kinesis_down(self, value: bool) -> None:
        self.configure(kinesis_down=value)

    @property
    def sqs_down(self) -> bool:
        return self.faults.sqs_down

    @sqs_down.setter
    def sqs_down(self, value: bool) -> None:
        self.configure(sqs_down=value)

    @property
    def receive_delay_s(self) -> float:
        return self.faults.receive_delay_s

    @receive_delay_s.setter
    def receive_delay_s(self, value: float) -> None:
        self.configure(receive_delay_s=value)

    @property
    def latency_s(self) -> float:
        return self.faults.latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self.configure(latency_s=value)

    # --- counters ---------------------------------------------------------------------

    def calls(self, operation: str | None = None) -> int:
        """Requests received for `operation` (e.g. "PutRecords"), or in total."""
        with self._lock:
            return self._calls[operation] if operation else sum(self._calls.values())

    def forwarded(self, operation: str | None = None) -> int:
        """Requests that reached the emulator for `operation`, or in total."""
        with self._lock:
            return self._forwarded[operation] if operation else sum(self._forwarded.values())

    def injected(self, kind: str | None = None) -> int:
        """Faults injected of `kind` (see the module's constants), or in total."""
        with self._lock:
            return self._injected[kind] if kind else sum(self._injected.values())

    def dropped(self, operation: str | None = None) -> int:
        """Calls whose connection to the emulator was lost: the client's was dropped too."""
        with self._lock:
            return self._dropped[operation] if operation else sum(self._dropped.values())

    def pending(self, operation: str | None = None) -> int:
        """Calls of `operation` (or all) forwarded to the emulator and not answered yet."""
        with self._lock:
            return self._pending[operation] if operation else sum(self._pending.values())

    def stats(self) -> dict[str, dict[str, int]]:
        """A copy of every counter, for reports and assertion messages."""
        with self._lock:
            return {
                "calls": dict(self._calls),
                "forwarded": dict(self._forwarded),
                "injected": dict(self._injected),
                "dropped": dict(self._dropped),
            }

    # --- lifecycle --------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise RuntimeError("fault proxy is not started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        """Start serving in a background thread; returns once the port is bound."""
        if self._thread is not None:
            return
        self._started.clear()
        self._error = None
        thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread = thread
        thread.start()
        if not self._started.wait(_START_TIMEOUT_S):
            raise RuntimeError("fault proxy did not start")
        if self._error is not None:
            thread.join(_STOP_TIMEOUT_S)
            self._thread = None
            raise RuntimeError("fault proxy failed to start") from self._error

    def stop(self) -> None:
        """Stop serving, close the upstream session and the loop; safe when not started."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError("fault proxy did not stop")
        self._port = None
        if self._error is not None:
            raise RuntimeError("fault proxy failed while serving") from self._error

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # re-raised in the test's thread by start() or stop()
            self._error = exc
        finally:
            self._started.set()  # never leave start() waiting
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=_UPSTREAM_TIMEOUT_S)
        # No connection cap: the proxy must never be the bottleneck it is measuring.
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self._session = session
            app = web.Application(client_max_size=16 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                self._port = int(runner.addresses[0][1])
                self._started.set()
                await self._stopping.wait()
            finally:
                await runner.cleanup()

    # --- the handler ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        latency_s = self.faults.latency_s
        if latency_s:
            await asyncio.sleep(latency_s)  # the simulated network, not a synchronisation
        target = request.headers.get("X-Amz-Target", "")
        try:
            if target.startswith(KINESIS_PREFIX):
                return await self._kinesis(request, target.removeprefix(KINESIS_PREFIX), body)
            if target.startswith(SQS_PREFIX):
                return await self._sqs(request, target.removeprefix(SQS_PREFIX), body)
            return await self._forward(request, target or request.path, body)
        except _Reset:
            if request.transport is not None:
                request.transport.abort()
            # Nothing reaches the client: its connection is already gone.
            return web.Response(status=500)

    async def _kinesis(self, request: web.Request, operation: str, body: bytes) -> web.Response:
        with self._lock:
            self._calls[operation] += 1
            faults = self._faults
            if faults.kinesis_down:
                self._injected[KINESIS_DOWN] += 1
                kind = KINESIS_DOWN
            elif operation in faults.fail_operations:
                self._injected[OPERATION_FAILED] += 1
                kind = OPERATION_FAILED
            elif faults.throttle_rate and self._rngs[THROTTLE].random() < faults.throttle_rate:
                self._injected[THROTTLE] += 1
                kind = THROTTLE
            else:
                kind = None
        if kind == KINESIS_DOWN:
            if faults.down_mode == "reset":
                raise _Reset
            return _error(500, "InternalFailure", "Kinesis is down (fault proxy)", kinesis=True)
        if kind == OPERATION_FAILED:
            return _error(500, "InternalFailure", "Internal failure (fault proxy)", kinesis=True)
        if kind == THROTTLE:
            code = (
                "ProvisionedThroughputExceededException"
                if operation == "PutRecords"
                else "LimitExceededException"
            )
            return _error(400, code, "Rate exceeded (fault proxy)", kinesis=True)
        if operation == "PutRecords" and (
            faults.put_records_entry_failure_rate
            or faults.failing_partition_keys
            or faults.shard_records_per_s
            or faults.shard_bytes_per_s
            or self._rewrites_answers(faults)
        ):
            return await self._put_records(request, body, faults)
        return await self._forward(request, operation, body)

    async def _sqs(self, request: web.Request, operation: str, body: bytes) -> web.Response:
        with self._lock:
            self._calls[operation] += 1
            faults = self._faults
            if faults.sqs_down:
                self._injected[SQS_DOWN] += 1
                kind = SQS_DOWN
            elif operation in faults.fail_operations:
                self._injected[OPERATION_FAILED] += 1
                kind = OPERATION_FAILED
            elif faults.queues_down and _queue_url(body) in faults.queues_down:
                self._injected[QUEUE_DOWN] += 1
                kind = QUEUE_DOWN
            elif faults.sqs_error_rate and self._rngs[SQS_ERROR].random() < faults.sqs_error_rate:
                self._injected[SQS_ERROR] += 1
                kind = SQS_ERROR
            else:
                kind = None
        if kind == SQS_DOWN and faults.down_mode == "reset":
            raise _Reset
        if kind == QUEUE_DOWN:
            return _error(503, "ServiceUnavailable", "The queue is unavailable (fault proxy)")
        if kind is not None:
            return _error(500, "InternalError", "We encountered an internal error (fault proxy)")
        if operation == "ReceiveMessage" and faults.receive_delay_s > 0:
            return await self._forward(request, operation, body, faults.receive_delay_s)
        return await self._forward(request, operation, body)

    def _shard_throttled(self, entry: dict[str, Any], faults: Faults, now: float) -> bool:
        """Take one record's tokens from its shard's buckets; True when there were none.

        Called with the lock held. Shards split the 128-bit MD5 key space evenly, as
        moto and Kinesis do for a stream created with ShardCount.
        """
        digest = int(hashlib.md5(str(entry["PartitionKey"]).encode()).hexdigest(), 16)  # noqa: S324 - Kinesis's own hash
        shard = min(digest // (2**128 // faults.shard_count), faults.shard_count - 1)
        size = len(base64.b64decode(entry.get("Data", ""))) + len(str(entry["PartitionKey"]))
        records_cap = faults.shard_records_per_s or float("inf")
        bytes_cap = faults.shard_bytes_per_s or float("inf")
        records, data, last = self._buckets.get(shard, (records_cap, bytes_cap, now))
        records = min(records_cap, records + (now - last) * records_cap)
        data = min(bytes_cap, data + (now - last) * bytes_cap)
        if records < 1 or data < size:
            self._buckets[shard] = (records, data, now)
            return True
        self._buckets[shard] = (records - 1, data - size, now)
        return False

    def _rewrites_answers(self, faults: Faults) -> bool:
        """Whether PutRecords answers are rewritten (sequence_inversions, shard_moves)."""
        return bool(faults.sequence_inversions or faults.shard_moves or self._moved)

    def _rewrite_answers(self, entries: list[Any], results: list[dict[str, Any]]) -> None:
        """Answer stored entries as a stream that broke order, or was resharded, would.

        Called with the lock held, after the emulator stored the records: only the answer
        changes. A fault's count goes down as it is used.
        """
        for entry, result in zip(entries, results, strict=True):
            if "SequenceNumber" not in result:
                continue  # a failed entry: nothing was stored
            key = str(entry["PartitionKey"])
            before = self._answered.get(key)
            if key not in self._moved and before is not None and self._faults.shard_moves:
                self._moved[key] = f"shardId-{1000 + len(self._moved):012d}"
                self._faults = replace(self._faults, shard_moves=self._faults.shard_moves - 1)
                self._injected[SHARD_MOVED] += 1
            if key in self._moved:
                result["ShardId"] = self._moved[key]
            elif (
                before is not None
                and before[0] == result["ShardId"]
                and self._faults.sequence_inversions
            ):
                # One below its predecessor; an equal number would break order as well.
                result["SequenceNumber"] = str(max(int(before[1]) - 1, 0))
                self._faults = replace(
                    self._faults, sequence_inversions=self._faults.sequence_inversions - 1
                )
                self._injected[SEQUENCE_INVERTED] += 1
            self._answered[key] = (str(result["ShardId"]), str(result["SequenceNumber"]))

    async def _put_records(self, request: web.Request, body: bytes, faults: Faults) -> web.Response:
        """Forward the entries that pass; answer the others as throttled entries; rewrite the
        stored ones' answers when told to."""
        doc = json.loads(body)
        entries: list[Any] = doc.get("Records", [])
        rate = faults.put_records_entry_failure_rate
        chosen: set[int] = set()
        with self._lock:
            draw = self._rngs[ENTRY_FAILURE].random
            failed = {i for i in range(len(entries)) if rate and draw() < rate}
            self._injected[ENTRY_FAILURE] += len(failed)
            if faults.failing_partition_keys:
                chosen = {
                    i
                    for i, entry in enumerate(entries)
                    if i not in failed
                    and entry.get("PartitionKey") in faults.failing_partition_keys
                }
                self._injected[KEY_FAILURE] += len(chosen)
                failed |= chosen
            if faults.shard_records_per_s or faults.shard_bytes_per_s:
                now = time.monotonic()
                throttled = {
                    i
                    for i, entry in enumerate(entries)
                    if i not in failed and self._shard_throttled(entry, faults, now)
                }
                self._injected[SHARD_THROTTLED] += len(throttled)
                failed |= throttled
            rewrite = self._rewrites_answers(faults)
        if not failed and not rewrite:
            return await self._forward(request, "PutRecords", body)
        kept = [entry for i, entry in enumerate(entries) if i not in failed]
        stream = str(doc.get("StreamName") or doc.get("StreamARN") or "?")
        failure = {
            "ErrorCode": "ProvisionedThroughputExceededException",
            "ErrorMessage": f"Rate exceeded for shard shardId-000000000000 in stream {stream} "
            "under account 123456789012 (fault proxy).",
        }
        if kept:
            # Nothing cut out: the body goes as it came.
            forwarded = json.dumps({**doc, "Records": kept}).encode() if failed else body
            upstream = await self._forward(request, "PutRecords", forwarded)
            if upstream.status != 200 or upstream.body is None:
                return upstream  # a whole-call failure: relayed as it came
            assert isinstance(upstream.body, bytes)
            answer: dict[str, Any] = json.loads(upstream.body)
            headers: Mapping[str, str] = upstream.headers
        else:
            answer = {"FailedRecordCount": 0, "Records": [], "EncryptionType": "NONE"}
            headers = _json_headers(kinesis=True)
        stored = iter(answer.get("Records", []))
        internal = {
            "ErrorCode": "InternalFailure",
            "ErrorMessage": "Internal service failure (fault proxy, failing_partition_keys).",
        }
        answer["Records"] = [
            (internal if i in chosen else failure) if i in failed else next(stored)
            for i in range(len(entries))
        ]
        answer["FailedRecordCount"] = int(answer.get("FailedRecordCount", 0)) + len(failed)
        if rewrite:
            with self._lock:
                self._rewrite_answers(entries, answer["Records"])
        return web.Response(
            status=200,
            body=json.dumps(answer).encode(),
            headers={k: v for k, v in headers.items() if k.lower() not in _SKIP_RESPONSE_HEADERS},
        )

    async def _forward(
        self, request: web.Request, operation: str, body: bytes, delay_s: float = 0.0
    ) -> web.Response:
        """Send the call to the emulator and relay its answer (after `delay_s`)."""
        with self._lock:
            self._pending[operation] += 1
        try:
            return await self._relay(request, operation, body, delay_s)
        finally:
            with self._lock:
                self._pending[operation] -= 1

    async def _relay(
        self, request: web.Request, operation: str, body: bytes, delay_s: float
    ) -> web.Response:
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in _SKIP_REQUEST_HEADERS
        }
        session = self._session
        assert session is not None, "the handler runs only while the session is open"
        url = self._target_url + request.path_qs
        try:
            async with session.request(
                request.method, url, data=body, headers=headers, allow_redirects=False
            ) as upstream:
                payload = await upstream.read()
                relayed = {
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() not in _SKIP_RESPONSE_HEADERS
                }
                status = upstream.status
        except aiohttp.ClientConnectionError as exc:
            # The emulator's side of the path is gone (it dropped the connection, or the
            # proxy is stopping under a long poll and closed its session): the client's side
            # goes too, as on a real network path, rather than a 500 the emulator never sent.
            with self._lock:
                self._dropped[operation] += 1
            raise _Reset from exc
        with self._lock:
            self._forwarded[operation] += 1
            if delay_s > 0:
                self._injected[RECEIVE_DELAYED] += 1
        if delay_s > 0:
            await asyncio.sleep(delay_s)  # the fault itself: an answer that is slow to arrive
        return web.Response(status=status, body=payload, headers=relayed)


def _queue_url(body: bytes) -> str | None:
    """The `QueueUrl` an SQS JSON-protocol request names, if any."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    url = doc.get("QueueUrl") if isinstance(doc, dict) else None
    return url if isinstance(url, str) else None


def _json_headers(*, kinesis: bool) -> dict[str, str]:
    return {
        "Content-Type": _KINESIS_CONTENT_TYPE if kinesis else _SQS_CONTENT_TYPE,
        "x-amzn-RequestId": str(uuid.uuid4()),
    }


def _error(status: int, code: str, message: str, *, kinesis: bool = False) -> web.Response:
    """An AWS JSON-protocol error: botocore reads the code from `__type`."""
    headers = _json_headers(kinesis=kinesis)
    if not kinesis:
        # SQS's JSON protocol also names the query-compatible code; botocore prefers it.
        headers["x-amzn-query-error"] = f"{code};Receiver"
    return web.Response(
        status=status,
        body=json.dumps({"__type": code, "message": message}).encode(),
        headers=headers,
    )
