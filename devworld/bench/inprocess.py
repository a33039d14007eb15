"""The daemon's own CPU per event: its parts drain the bench's backlog, AWS answered in-process.

    python -m devworld.bench.inprocess [--submissions N] [--rounds N] [--latency-ms MS]

`make bench` measures the daemon whole, and on this shared VM one round is one sample of
±15%. This drives the daemon's own parts, wired by `app.assemble` as `run` wires them,
against stand-ins for the SQS, Kinesis and DLQ clients that answer every call after the
latency (an asyncio sleep: the loop idles as it would during a round trip) and do nothing
else: no HTTP, no signing, no JSON, no emulator. What it prints is what our code and the event
loop cost per event, without the libraries under the calls, and the Python function calls per
event (cProfile's count, in a round of its own): a count depends on the code and the backlog,
not on how busy the VM is, so it compares two commits where CPU seconds cannot.

It is not the daemon's CPU: the lean path's cost per call is `devworld.bench.calls`, start-up
and the whole are `make bench`'s. The stand-ins accept everything (no throttling, no failed
entries): this measures the path every event takes, not the retries.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import uvloop
from prometheus_client import CollectorRegistry

from devworld.bench.workloads import backlog
from event_processor import app, constants
from event_processor.config import Settings
from event_processor.metrics import Metrics
from event_processor.retry import RetryPolicy

if TYPE_CHECKING:
    from event_processor.awsjson import DlqApi, KinesisApi, SqsApi

_QUEUE_URL = "http://in-process/000000000000/submissions"
_DLQ_URL = "http://in-process/000000000000/submissions-dlq"
# What the queue and the DLQ accept (their MaximumMessageSize), as the daemon reads it.
_MAX_MESSAGE_BYTES = constants.SQS_MAX_MESSAGE_BYTES
# An empty receive waits this long, as a long poll on an empty queue would (shortened).
_EMPTY_POLL_S = 0.5


class Sqs:
    """The source queue and the DLQ: receives hand out the backlog, deletes count down."""

    def __init__(self, bodies: list[str], latency_s: float) -> None:
        sent = str(int(time.time() * 1000))
        self._queue = [
            {
                "MessageId": f"m-{index}",
                "ReceiptHandle": f"{'r' * 180}-{index}",
                "Body": body,
                "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": sent},
            }
            for index, body in enumerate(bodies)
        ]
        self._latency_s = latency_s
        self._undeleted = len(bodies)
        self.drained = asyncio.Event()
        self.calls = 0

    async def receive_message(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self._latency_s)
        if not self._queue:
            await asyncio.sleep(_EMPTY_POLL_S)
            return {"Messages": []}
        count = int(params["MaxNumberOfMessages"])
        messages, self._queue = self._queue[:count], self._queue[count:]
        return {"Messages": messages}

    async def delete_message_batch(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self._latency_s)
        entries = params["Entries"]
        self._undeleted -= len(entries)
        if self._undeleted <= 0:
            self.drained.set()
        return {"Successful": [{"Id": e["Id"]} for e in entries], "Failed": []}

    async def change_message_visibility_batch(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        return {"Successful": [{"Id": e["Id"]} for e in params["Entries"]], "Failed": []}

    async def send_message_batch(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self._latency_s)
        ok = [{"Id": e["Id"], "MessageId": "d", "MD5OfMessageBody": ""} for e in params["Entries"]]
        return {"Successful": ok, "Failed": []}


class Kinesis:
    """The stream: every record is accepted."""

    def __init__(self, latency_s: float) -> None:
        self._latency_s = latency_s
        self.records = 0
        self.calls = 0

    async def put_records(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self._latency_s)
        records = params["Records"]
        self.records += len(records)
        return {
            "FailedRecordCount": 0,
            "Records": [{"SequenceNumber": "1", "ShardId": "shardId-0"} for _ in records],
        }

    async def describe_stream_summary(self, **_: Any) -> dict[str, Any]:
        self.calls += 1
        return {"StreamDescriptionSummary": {"StreamStatus": "ACTIVE"}}


@dataclass(frozen=True)
class Drain:
    cpu_s: float
    records: int
    calls: int
    function_calls: int | None


async def drain(bodies: list[str], latency_s: float, profile: bool) -> Drain:
    """One drain of `bodies` by freshly assembled parts; CPU from the first receive to the
    last delete."""
    settings = Settings(queue_url=_QUEUE_URL, dlq_url=_DLQ_URL, stream_name="events")
    resolved = app.Resolved(_QUEUE_URL, _MAX_MESSAGE_BYTES, _MAX_MESSAGE_BYTES)
    sqs, kinesis = Sqs(bodies, latency_s), Kinesis(latency_s)
    metrics = Metrics(CollectorRegistry())
    parts = app.assemble(
        settings,
        resolved,
        metrics,
        RetryPolicy(),
        sqs=cast("SqsApi", sqs),
        kinesis=cast("KinesisApi", kinesis),
        dlq=cast("DlqApi", sqs),
    )
    # As the daemon runs once started (cli._started): start-up's objects frozen, gen0 at 10,000.
    gc.collect()
    gc.freeze()
    profiler = cProfile.Profile() if profile else None
    began = time.process_time()
    if profiler is not None:
        profiler.enable()
    running = asyncio.create_task(parts.worker.run())
    await sqs.drained.wait()
    if profiler is not None:
        profiler.disable()
    cpu_s = time.process_time() - began
    parts.worker.stop.set()
    await running
    await parts.source.close()
    await parts.dlq.close()
    gc.unfreeze()
    function_calls = (
        sum(entry.callcount for entry in profiler.getstats()) if profiler is not None else None
    )
    return Drain(cpu_s, kinesis.records, sqs.calls + kinesis.calls, function_calls)


def main() -> int:
    parser = argparse.ArgumentParser(prog="inprocess", description=__doc__)
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=3, help="timed drains (plus one counted)")
    parser.add_argument("--latency-ms", type=float, default=10.0)
    args = parser.parse_args()
    bodies = backlog(args.submissions, args.seed)
    latency_s = args.latency_ms / 1000
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(constants.GC_GEN0_THRESHOLD, older, oldest)
    uvloop.run(drain(bodies, latency_s, profile=False))  # warm-up: first-use costs, caches
    print(f"{len(bodies)} submissions, AWS answered in-process after {args.latency_ms:g} ms")
    for _ in range(args.rounds):
        result = uvloop.run(drain(bodies, latency_s, profile=False))
        print(
            f"  CPU {result.cpu_s:.3f} s = {result.cpu_s / result.records * 1e6:.1f} µs/event"
            f" ({result.records} records, {result.calls} AWS calls)"
        )
    counted = uvloop.run(drain(bodies, latency_s, profile=True))
    assert counted.function_calls is not None
    print(
        f"  Python function calls per event (cProfile, one more drain): "
        f"{counted.function_calls / counted.records:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
