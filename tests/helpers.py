"""Test helpers: polling with a deadline (never a bare sleep), reading the world back, and
the one way to run our console scripts as subprocesses."""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiobotocore.session import get_session
from prometheus_client import CollectorRegistry

from devworld.emulator import Emulator, World, read_stream
from devworld.emulator import queue_depth as emulator_queue_depth
from devworld.verify import decode_records, verify
from event_processor import app
from event_processor.aws.lean import LeanKinesis, LeanSqs
from event_processor.metrics import Metrics
from event_processor.tools.aws import queue_counts as sqs_queue_counts
from sensor_fleet.sender import MessageAttributes, Sender
from tests.conftest import settings_for

if TYPE_CHECKING:
    from types_aiobotocore_kinesis import KinesisClient
    from types_aiobotocore_sqs import SQSClient

# One line of the demo's report on its rogue device (devworld.rogue.RogueVerdict.lines).
_ROGUE_LINE = re.compile(
    r"^  (?P<what>.+): sent (?P<sent>\d+), rejected as (?P<reason>\w+) (?P<n>\d+)$", re.M
)
# How long a CLI subprocess may take to log that it runs (imports, clients, start-up checks).
CLI_START_TIMEOUT_S = 30.0


# A poll's first interval, and the longest it grows to (by POLL_GROWTH a look) unless a test
# fixes it: a look at the emulator costs ~10 ms of CPU, so a 30 s wait looked 600 times at a
# fixed 50 ms; growing, it looks ~70 times, and a short wait is as quick as before.
POLL_FIRST_S = 0.05
POLL_MAX_S = 0.5
POLL_GROWTH = 1.25


def poll_intervals(interval_s: float | None) -> Iterator[float]:
    """The sleeps between a poll's looks: `interval_s` each, or growing from POLL_FIRST_S."""
    if interval_s is not None:
        yield from itertools.repeat(interval_s)
    interval = POLL_FIRST_S
    while True:
        yield interval
        interval = min(interval * POLL_GROWTH, POLL_MAX_S)


async def eventually(
    check: Callable[[], Awaitable[bool] | bool],
    timeout_s: float = 30.0,
    interval_s: float | None = None,
) -> None:
    """Poll `check` (a predicate, or a function returning an awaitable) until it is true; fail
    with the timeout otherwise. The sleep between looks is the poll's, never a synchronisation
    (see poll_intervals)."""
    deadline = time.monotonic() + timeout_s
    intervals = poll_intervals(interval_s)
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(min(next(intervals), max(0.0, deadline - time.monotonic())))


def check_rogue_refused(stdout: str) -> None:
    """Assert the demo's report says its rogue device tried each forgery and every attempt was
    rejected for its reason, none published."""
    rogue = {m["reason"]: (int(m["sent"]), int(m["n"])) for m in _ROGUE_LINE.finditer(stdout)}
    assert set(rogue) == {"signature_missing", "signature_invalid", "device_mismatch"}, stdout
    assert all(sent > 0 and rejected >= sent for sent, rejected in rogue.values()), rogue
    assert "every one rejected; its records in the stream: 0" in stdout


def send_bodies(
    emulator: Emulator,
    queue_url: str,
    bodies: list[str],
    attributes: Sequence[MessageAttributes | None] | None = None,
) -> None:
    """Send with the fleet's own Sender (each body with its MessageAttributes, when given);
    every body must be accepted."""
    accepted = Sender(client(emulator, "sqs"), queue_url).send(bodies, attributes)
    assert len(accepted) == len(bodies), f"{len(bodies) - len(accepted)} bodies not sent"


@functools.cache
def client(emulator: Emulator, service: str) -> Any:
    """One boto3 client per emulator and service: building one costs tens of milliseconds."""
    return emulator.boto3_client(service)


def queue_depth(emulator: Emulator, queue_url: str) -> int:
    """Visible plus in-flight messages."""
    return emulator_queue_depth(client(emulator, "sqs"), queue_url)


def drain_queue(emulator: Emulator, queue_url: str) -> list[dict[str, Any]]:
    """Receive (and delete) every message of a queue, with its attributes."""
    sqs = client(emulator, "sqs")
    messages: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
            ],
        )


def stream_records(emulator: Emulator, world: World) -> list[dict[str, Any]]:
    """Every record of the stream, decoded, with its shard and sequence number."""
    return decode_records(read_stream(client(emulator, "kinesis"), world.stream_name))


def check_order(records: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Assert per-submission order on one shard (first occurrences); return sequences seen.

    Duplicates (redeliveries) are allowed, but must carry the event_id of their first copy.
    The rules are verify()'s, judged against what the records themselves hold.
    """
    held: dict[str, set[int]] = {}
    for record in records:
        held.setdefault(record["submission_id"], set()).add(record["sequence"])
    result = verify(records, {s: sorted(q) for s, q in held.items()})
    assert not result.split_across_shards, f"spans shards: {result.split_across_shards}"
    assert not result.changed_ids, f"duplicates with a new event_id: {result.changed_ids}"
    assert not result.out_of_order, f"out of order: {result.out_of_order}"
    return result.firsts


def metric_total(registry: CollectorRegistry, name: str) -> float:
    """The sum of a metric's samples over every label set (0 when it has none yet)."""
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    )


def queue_counts(emulator: Emulator, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    return sqs_queue_counts(client(emulator, "sqs"), queue_url)


def wait_for(
    check: Callable[[], bool], timeout_s: float, what: str, interval_s: float | None = None
) -> None:
    """Poll `check` until it is true; fail naming `what` otherwise (sleeps: poll_intervals)."""
    deadline = time.monotonic() + timeout_s
    intervals = poll_intervals(interval_s)
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(min(next(intervals), max(0.0, deadline - time.monotonic())))


def cli_command(script: str, *args: str) -> list[str]:
    """The argv of one of our console scripts (`event-processor`, `sensor-fleet`) with `args`.

    `python -m` with this interpreter, not the script on PATH: the test runs the code under
    test, whatever else is installed.
    """
    return [sys.executable, "-m", script.replace("-", "_"), *args]


def run_cli(
    script: str, *args: str, env: Mapping[str, str], timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a console script to completion, its output captured as text; its exit code is the
    test's to check (never raises on one), and a hang fails after `timeout_s`."""
    return subprocess.run(
        cli_command(script, *args),
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def daemon_env(emulator: Emulator, world: World, **settings: str) -> dict[str, str]:
    """This process's environment, pointed at `world`, for a daemon configured by env alone."""
    return {
        **os.environ,
        **emulator.client_env(),
        "QUEUE_URL": world.queue_url,
        "DLQ_URL": world.dlq_url,
        "STREAM_NAME": world.stream_name,
        "WAIT_TIME_SECONDS": "1",
        "METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
        **settings,
    }


class Cli:
    """One long-running `event-processor` subprocess, its output (JSON log lines) in a file.

    Start it with `Cli.start`, or through the e2e fixtures `spawn_cli` and `cli`, which reap it.
    """

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @classmethod
    def start(
        cls, log_path: Path, *args: str, env: Mapping[str, str], script: str = "event-processor"
    ) -> Cli:
        """Start `script ARGS` with `env`; stdout and stderr both go to `log_path`."""
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                cli_command(script, *args), env=dict(env), stdout=log, stderr=subprocess.STDOUT
            )
        return cls(process, log_path)

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (a partial last line is skipped)."""
        lines = []
        for line in self.log_path.read_bytes().splitlines():
            if line.startswith(b"{"):
                try:
                    lines.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    continue
        return lines

    def actions(self, action: str) -> list[dict[str, Any]]:
        """The log lines with this `action`."""
        return [line for line in self.logs() if line.get("action") == action]

    def wait_running(self) -> None:
        """Wait until it logs that it runs; fail with its log if it exits first."""

        def running() -> bool:
            assert self.process.poll() is None, self.log_path.read_text()
            return bool(self.actions("running"))

        wait_for(running, CLI_START_TIMEOUT_S, "the CLI logging that it runs")


@dataclass
class LeanClients:
    sqs: SQSClient
    kinesis: KinesisClient
    lean_sqs: LeanSqs
    lean_kinesis: LeanKinesis


@asynccontextmanager
async def lean_clients(world: World, endpoint_url: str) -> AsyncIterator[LeanClients]:
    """The daemon's two clients (its own configurations) and the lean path in front of them,
    for `world` through `endpoint_url` (the emulator, a proxy in front of it, or LocalStack).
    Every hot call must be on the lean path: otherwise the tests that compare it with botocore's
    would compare botocore's with itself (after a bump that moved a private part, say)."""
    settings = settings_for(world, endpoint_url=endpoint_url)
    session = get_session()
    async with (
        app.sqs_client(session, settings) as sqs,
        app.kinesis_client(session, settings) as kinesis,
    ):
        credentials = await session.get_credentials()
        registry = CollectorRegistry()
        gauge = Metrics(registry, memory_limit_bytes=None).lean_path
        clients = LeanClients(
            sqs,
            kinesis,
            await LeanSqs.create(sqs, credentials, world.queue_url, gauge),
            await LeanKinesis.create(kinesis, credentials, world.stream_name, gauge),
        )
        for operation in ("ReceiveMessage", "DeleteMessageBatch", "PutRecords"):
            on_it = registry.get_sample_value("event_processor_lean_path", {"operation": operation})
            assert on_it == 1.0, f"{operation} is not on the lean path"
        yield clients
