"""The daemon's own CPU per event: its parts drain the bench's backlog, AWS answered in-process.

    python -m devworld.bench.inprocess [--submissions N] [--rounds N] [--latency-ms MS]
                                       [--modes off enforce]

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

The backlog is signed (make bench's, see devworld.bench.workloads), and each round drains it
with AUTH_MODE=off and enforce in turn (the order reversed every other round; enforce reads
its key set from a file before the clock starts); enforce's cost against off follows, CPU and
calls per event, and events/s by the wall clock: without AWS's own cost the loop is busy about
half of a drain, so a slower path shows there as it would not in `make bench`, whose rate is
the emulator's.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import uvloop
from prometheus_client import CollectorRegistry

from devworld.bench.compare import Comparison, header, in_turn
from devworld.bench.workloads import BenchKeys, MessageAttributes, fleet_backlog
from event_processor import app, constants, preflight
from event_processor.auth.authenticator import RESULT_OK
from event_processor.auth.keyset import FileKeySource
from event_processor.config import AuthMode, Settings
from event_processor.metrics import Metrics
from event_processor.retry import RetryPolicy

if TYPE_CHECKING:
    from event_processor.aws.ports import DlqApi, KinesisApi, SqsApi

_QUEUE_URL = "http://in-process/000000000000/submissions"
_DLQ_URL = "http://in-process/000000000000/submissions-dlq"
# What the queue and the DLQ accept (their MaximumMessageSize), as the daemon reads it.
_MAX_MESSAGE_BYTES = constants.SQS_MAX_MESSAGE_BYTES
# The counter of signatures checked, by result (docs/authentication.md, "Metrics").
_AUTH_RESULTS = "event_processor_auth_results_total"
# An empty receive waits this long, as a long poll on an empty queue would (shortened).
_EMPTY_POLL_S = 0.5


class Sqs:
    """The source queue and the DLQ: receives hand out the backlog, deletes count down."""

    def __init__(
        self,
        bodies: list[str],
        latency_s: float,
        attributes: Sequence[MessageAttributes] | None = None,
    ) -> None:
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
        if attributes is not None:
            for message, message_attributes in zip(self._queue, attributes, strict=True):
                message["MessageAttributes"] = message_attributes
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


# A Kinesis sequence number as the service writes them: 56 decimal digits, growing.
_FIRST_SEQUENCE_NUMBER = 49_650 * 10**51
_SHARD_ID = "shardId-000000000000"


class Kinesis:
    """The stream, one shard: every record is accepted, with the next sequence number."""

    def __init__(self, latency_s: float) -> None:
        self._latency_s = latency_s
        self.records = 0
        self.calls = 0

    async def put_records(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self._latency_s)
        records = params["Records"]
        first = _FIRST_SEQUENCE_NUMBER + self.records
        self.records += len(records)
        # Real answers carry growing sequence numbers, which the sink checks per lane.
        return {
            "FailedRecordCount": 0,
            "Records": [
                {"SequenceNumber": str(first + index), "ShardId": _SHARD_ID}
                for index in range(len(records))
            ],
        }

    async def describe_stream_summary(self, **_: Any) -> dict[str, Any]:
        self.calls += 1
        return {"StreamDescriptionSummary": {"StreamStatus": "ACTIVE"}}


@dataclass(frozen=True)
class Drain:
    cpu_s: float
    # Wall-clock seconds over the same span: with the stand-ins' latency, what bounds events/s.
    seconds: float
    records: int
    calls: int
    function_calls: int | None
    # Signatures that held (auth_results_total{result="ok"}); None under AUTH_MODE=off.
    verified: int | None = None


async def drain(
    bodies: list[str],
    latency_s: float,
    profile: bool,
    *,
    attributes: Sequence[MessageAttributes] | None = None,
    auth_mode: AuthMode = AuthMode.OFF,
    key_file: Path | None = None,
) -> Drain:
    """One drain of `bodies` (with `attributes[i]` on `bodies[i]`, if given) by freshly
    assembled parts; CPU from the first receive to the last delete. Under monitor or enforce
    the key set is read from `key_file` first, as `app.run` does before it receives."""
    settings = Settings(
        queue_url=_QUEUE_URL,
        dlq_url=_DLQ_URL,
        stream_name="events",
        auth_mode=auth_mode,
        auth_keys_file=key_file,
    )
    resolved = preflight.Resolved(_QUEUE_URL, _MAX_MESSAGE_BYTES, _MAX_MESSAGE_BYTES)
    sqs, kinesis = Sqs(bodies, latency_s, attributes), Kinesis(latency_s)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    parts = app.assemble(
        settings,
        resolved,
        metrics,
        RetryPolicy(),
        sqs=cast("SqsApi", sqs),
        kinesis=cast("KinesisApi", kinesis),
        dlq=cast("DlqApi", sqs),
        key_source=None if key_file is None else FileKeySource(key_file),
    )
    if parts.keys is not None and not await parts.keys.load(parts.worker.stop):
        raise RuntimeError("the key set was not read")
    # As the daemon runs once started (cli._started): start-up's objects frozen, gen0 at 10,000.
    gc.collect()
    gc.freeze()
    profiler = cProfile.Profile() if profile else None
    began, began_wall = time.process_time(), time.monotonic()
    if profiler is not None:
        profiler.enable()
    running = asyncio.create_task(parts.worker.run())
    await sqs.drained.wait()
    if profiler is not None:
        profiler.disable()
    cpu_s, seconds = time.process_time() - began, time.monotonic() - began_wall
    parts.worker.stop.set()
    await running
    await parts.source.close()
    await parts.dlq.close()
    gc.unfreeze()
    function_calls = (
        sum(entry.callcount for entry in profiler.getstats()) if profiler is not None else None
    )
    verified = None
    if parts.keys is not None:
        ok = registry.get_sample_value(_AUTH_RESULTS, {"result": RESULT_OK})
        verified = int(ok or 0)
    return Drain(
        cpu_s, seconds, kinesis.records, sqs.calls + kinesis.calls, function_calls, verified
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="inprocess", description=__doc__)
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed drains of each mode (plus one counted)"
    )
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument(
        "--modes",
        nargs="+",
        type=AuthMode,
        choices=(AuthMode.OFF, AuthMode.ENFORCE),
        default=[AuthMode.OFF, AuthMode.ENFORCE],
        help="AUTH_MODEs drained in turn in each round",
    )
    args = parser.parse_args()
    submissions = fleet_backlog(args.submissions, args.seed)
    bodies = [body for _, body in submissions]
    keys = BenchKeys.new()
    attributes = keys.sign(submissions)
    latency_s = args.latency_ms / 1000
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(constants.GC_GEN0_THRESHOLD, older, oldest)
    with tempfile.TemporaryDirectory(prefix="bench-keys-") as key_dir:
        key_file = keys.write(Path(key_dir))

        def run(mode: AuthMode, profile: bool) -> Drain:
            return uvloop.run(
                drain(
                    bodies,
                    latency_s,
                    profile,
                    attributes=attributes,
                    auth_mode=mode,
                    key_file=None if mode is AuthMode.OFF else key_file,
                )
            )

        for mode in args.modes:
            run(mode, profile=False)  # warm-up: first-use costs, caches
        print(
            f"{len(bodies)} submissions, each signed, AWS answered in-process after"
            f" {args.latency_ms:g} ms; AUTH_MODE {' and '.join(args.modes)} in turn"
        )
        cpu: dict[AuthMode, list[float]] = {mode: [] for mode in args.modes}
        rate: dict[AuthMode, list[float]] = {mode: [] for mode in args.modes}
        for round_ in range(args.rounds):
            for mode in in_turn(args.modes, round_):
                result = run(mode, profile=False)
                cpu[mode].append(result.cpu_s / result.records * 1e6)
                rate[mode].append(result.records / result.seconds)
                print(f"  {mode:<8} {_drained(result)}")
        calls: dict[AuthMode, list[float]] = {}
        for mode in args.modes:
            counted = run(mode, profile=True)
            assert counted.function_calls is not None
            calls[mode] = [counted.function_calls / counted.records]
            print(
                f"  {mode:<8} Python function calls per event (cProfile, one more drain): "
                f"{calls[mode][0]:.1f}"
            )
    if AuthMode.OFF in cpu and AuthMode.ENFORCE in cpu:
        print(f"\n{header(args.rounds)}")
        off, enforce = AuthMode.OFF, AuthMode.ENFORCE
        print(Comparison.of(cpu[off], cpu[enforce]).line("CPU µs/event"))
        print(
            Comparison.of(rate[off], rate[enforce]).line(
                "events/s (wall clock)", digits=0, relative=True
            )
        )
        print(Comparison.of(calls[off], calls[enforce]).line("Python calls/event"))
    return 0


def _drained(result: Drain) -> str:
    """One drain's line: its CPU, what it published and called, and what it verified."""
    line = (
        f"CPU {result.cpu_s:.3f} s = {result.cpu_s / result.records * 1e6:.1f} µs/event"
        f" in {result.seconds:.2f} s ({result.records} records, {result.calls} AWS calls"
    )
    if result.verified is not None:
        line += f", {result.verified} signatures verified"
    return line + ")"


if __name__ == "__main__":
    raise SystemExit(main())
