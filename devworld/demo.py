"""`event-processor demo`: the whole pipeline on the embedded emulator, verified at the end.

Starts moto in-process (or uses `--endpoint-url`, e.g. a LocalStack), creates the queue, DLQ,
a 2-shard stream and the sensors' key set secret, runs a sped-up signing fleet, a rogue device
(devworld/rogue.py) and the daemon with AUTH_MODE=enforce together under a live view, then
reads the stream back and checks that nothing valid the fleet signed was lost, that order held
per submission, and that every submission of the rogue was rejected and none published. Exit 0
only if all of that holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TextIO

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.live import Live
from rich.table import Table

from devworld.emulator import (
    DUMMY_ACCESS_KEY_ID,
    DUMMY_SECRET_ACCESS_KEY,
    KEY_SET_SECRET_NAME,
    Emulator,
    World,
    create_key_set_secret,
    create_world,
    free_port,
    queue_depth,
    read_stream,
)
from devworld.rogue import Rogue
from devworld.verify import (
    decode_records,
    expected_device_order,
    expected_sequences,
    verify,
    verify_device_order,
)
from event_processor import app
from event_processor.config import AuthMode, Settings
from event_processor.tools import aws
from event_processor.tools.keys import read_key_set
from sensor_fleet.generator import device_ids, encode, make_submission
from sensor_fleet.sender import Sender
from sensor_fleet.signer import FleetSigner

if TYPE_CHECKING:
    from event_processor.pipeline.worker import Worker

# How long the end of the demo waits for the daemon to empty the queue.
_DRAIN_TIMEOUT_S = 60.0
# The live view's refresh; without a terminal, a plain status line this often instead.
_REFRESH_S = 0.5
_PLAIN_STATUS_EVERY_S = 5.0
# events/s is measured over this trailing window.
_RATE_WINDOW_S = 3.0
_PREFIX = "event_processor_"
_FIFO_NOTE = (
    "FIFO queue and DLQ: each device sends in its own message group; the stream's partition key"
    " is the device, so each device's submissions are also checked in the order sent"
)


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 30.0
    devices: int = 10
    round_interval_s: float = 1.0  # the real fleet waits 30-45 s; the demo is sped up
    invalid_probability: float = 0.01
    metrics_port: int = 9100
    endpoint_url: str | None = None  # an existing LocalStack instead of the embedded emulator
    seed: int = 1
    rogue_every_rounds: int = 3  # the rogue tries each of its forgeries every N fleet rounds
    # A FIFO queue and DLQ, one message group per device; the check then also wants each
    # device's submissions in the stream in the order sent.
    fifo: bool = False

    def __post_init__(self) -> None:
        if self.rogue_every_rounds < 1:
            raise ValueError("rogue_every_rounds must be at least 1")


class Snapshot:
    """The registry's samples by (name, labels), read once per refresh."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in registry.collect():
            for sample in family.samples:
                key = (sample.name.removeprefix(_PREFIX), tuple(sorted(sample.labels.items())))
                self.samples[key] = sample.value

    def total(self, name: str) -> float:
        return sum(v for (n, _), v in self.samples.items() if n == name)

    def by(self, name: str, label: str) -> dict[str, float]:
        return {
            dict(labels)[label]: v
            for (n, labels), v in self.samples.items()
            if n == name and label in dict(labels)
        }

    def quantile(self, histogram: str, q: float) -> float:
        """Estimated from the buckets, as Prometheus's histogram_quantile does it."""
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (n, labels), v in self.samples.items()
            if n == histogram + "_bucket"
        )
        if not buckets or buckets[-1][1] == 0:
            return math.nan
        rank = q * buckets[-1][1]
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound
                share = (rank - lower_count) / (count - lower_count) if count > lower_count else 0
                return lower_bound + (bound - lower_bound) * share
            lower_bound, lower_count = bound, count
        return lower_bound


@dataclass(frozen=True)
class Frame:
    """What one refresh of the live view shows."""

    snap: Snapshot
    elapsed_s: float
    sent: int  # by the fleet
    rogue_sent: int
    rate: float  # events published per second


def _view(frame: Frame) -> Table:
    snap = frame.snap
    table = Table(title=f"event-processor demo · {frame.elapsed_s:5.1f} s", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("submissions sent by the fleet (signed)", str(frame.sent))
    table.add_row("submissions sent by the rogue", str(frame.rogue_sent))
    table.add_row("received from SQS", f"{snap.total('messages_received_total'):.0f}")
    for result, count in sorted(snap.by("auth_results_total", "result").items()):
        table.add_row(f"authentication · {result}", f"{count:.0f}")
    for event_type, count in sorted(snap.by("events_published_total", "event_type").items()):
        table.add_row(f"published · {event_type}", f"{count:.0f}")
    for reason, count in sorted(snap.by("submissions_rejected_total", "reason").items()):
        table.add_row(f"rejected submissions · {reason}", f"{count:.0f}")
    for reason, count in sorted(snap.by("events_rejected_total", "reason").items()):
        table.add_row(f"rejected events · {reason}", f"{count:.0f}")
    table.add_row("sent to the DLQ", f"{snap.total('dlq_messages_sent_total'):.0f}")
    table.add_row("in flight", f"{snap.total('in_flight_submissions'):.0f}")
    table.add_row("events/s", f"{frame.rate:.0f}")
    p50 = snap.quantile("submission_latency_seconds", 0.5)
    p99 = snap.quantile("submission_latency_seconds", 0.99)
    table.add_row("SQS → Kinesis p50 / p99", f"{p50 * 1000:.0f} ms / {p99 * 1000:.0f} ms")
    return table


def _plain(frame: Frame) -> str:
    snap = frame.snap
    auth_ok = snap.by("auth_results_total", "result").get("ok", 0.0)
    auth_failed = snap.total("auth_results_total") - auth_ok
    return (
        f"[{frame.elapsed_s:5.1f}s] sent {frame.sent} + rogue {frame.rogue_sent}"
        f" | received {snap.total('messages_received_total'):.0f}"
        f" | auth ok {auth_ok:.0f}, failed {auth_failed:.0f}"
        f" | published {snap.total('events_published_total'):.0f} ({frame.rate:.0f}/s)"
        f" | rejected submissions {snap.total('submissions_rejected_total'):.0f}, events "
        f"{snap.total('events_rejected_total'):.0f} | DLQ {snap.total('dlq_messages_sent_total'):.0f}"
        f" | in flight {snap.total('in_flight_submissions'):.0f}"
        f" | p50/p99 {snap.quantile('submission_latency_seconds', 0.5) * 1000:.0f}/"
        f"{snap.quantile('submission_latency_seconds', 0.99) * 1000:.0f} ms"
    )


@dataclass(frozen=True)
class _Fleet:
    """The demo's senders: the fleet's devices, their signer, and the rogue among them."""

    devices: list[str]
    signer: FleetSigner
    rogue: Rogue


async def _fleet(
    sender: Sender, fleet: _Fleet, options: DemoOptions, stop: asyncio.Event, bodies: list[str]
) -> None:
    """The simulated fleet, sped up: every round each device sends one signed submission, and
    every few rounds the rogue tries its forgeries.

    It sends with the sensor fleet's own Sender and signer (in a thread: it is boto3), so the
    demo's fleet behaves as `sensor-fleet simulate` with a key set does.
    """
    rng = random.Random(options.seed)
    rounds = 0
    while not stop.is_set():
        round_bodies = [
            encode(make_submission(rng, d, options.invalid_probability)) for d in fleet.devices
        ]
        attributes = [
            fleet.signer.attributes(d, body)
            for d, body in zip(fleet.devices, round_bodies, strict=True)
        ]
        # Only what SQS accepted is expected in the stream. On a FIFO queue each device is its
        # own message group, and the rogue sends in the group of the device it stole from.
        bodies.extend(await asyncio.to_thread(sender.send, round_bodies, attributes, fleet.devices))
        if rounds % options.rogue_every_rounds == 0:
            attempts = fleet.rogue.attempts()
            accepted = await asyncio.to_thread(
                sender.send,
                [a.body for a in attempts],
                [a.attributes for a in attempts],
                [fleet.rogue.stolen.device_id] * len(attempts),
            )
            fleet.rogue.record(attempts, set(accepted))
        rounds += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(options.round_interval_s):
                await stop.wait()


def _credentials() -> None:
    # Emulators take any credentials; the SDK still wants some. Real ones are left alone.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", DUMMY_ACCESS_KEY_ID)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET_ACCESS_KEY)


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    _credentials()
    console = Console(file=out)
    if options.endpoint_url is not None:
        # The daemon's own settings resolve the region, as for the tools.
        settings = Settings(endpoint_url=options.endpoint_url)
        sqs, kinesis = aws.client(settings, "sqs"), aws.client(settings, "kinesis")
        world = await asyncio.to_thread(create_world, sqs, kinesis, fifo=options.fifo)
        console.print(f"using the AWS endpoint at {world.endpoint_url}")
        secrets = aws.client(settings, "secretsmanager")
        return await _run(world, _Clients(sqs, kinesis, secrets), options, console)
    emulator = Emulator()
    await asyncio.to_thread(emulator.start)
    try:
        world = await asyncio.to_thread(emulator.create_world, fifo=options.fifo)
        console.print(
            f"embedded AWS emulator (moto, patched for thread safety) at {world.endpoint_url}"
        )
        clients = _Clients(
            *(emulator.boto3_client(s) for s in ("sqs", "kinesis", "secretsmanager"))
        )
        return await _run(world, clients, options, console)
    finally:
        await asyncio.to_thread(emulator.stop)


@dataclass(frozen=True)
class _Clients:
    """boto3 clients on the world's endpoint."""

    sqs: Any
    kinesis: Any
    secretsmanager: Any


class _Progress:
    """Samples the registry for the live view and keeps a trailing events/s."""

    def __init__(self, registry: CollectorRegistry, bodies: list[str], rogue: Rogue) -> None:
        self._registry = registry
        self._bodies = bodies
        self._rogue = rogue
        self._began = time.monotonic()
        self._published: deque[tuple[float, float]] = deque()

    def frame(self) -> Frame:
        snap = Snapshot(self._registry)
        now = time.monotonic()
        self._published.append((now, snap.total("events_published_total")))
        while now - self._published[0][0] > _RATE_WINDOW_S:
            self._published.popleft()
        (t0, n0), (t1, n1) = self._published[0], self._published[-1]
        rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        return Frame(snap, now - self._began, len(self._bodies), self._rogue.total, rate)


async def _start_daemon(
    settings: Settings, registry: CollectorRegistry
) -> tuple[asyncio.Task[int], Worker | None]:
    started: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
    hooks = app.Hooks(registry=registry, on_started=lambda w, _: started.set_result(w))
    daemon = asyncio.create_task(app.run(settings, hooks))
    waiters: list[asyncio.Future[Any]] = [daemon, started]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    return daemon, started.result() if started.done() else None


async def _watch(
    *,
    worker: Worker,
    progress: _Progress,
    options: DemoOptions,
    console: Console,
    drained: Any,
    fleet_stop: asyncio.Event,
) -> None:
    """Live view for the duration (or until Ctrl-C), then until the daemon drained the queue."""

    async def tick() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REFRESH_S):
                await worker.stop.wait()  # Ctrl-C stops the daemon; the demo ends with it

    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    last_plain = -_PLAIN_STATUS_EVERY_S
    drain_deadline: float | None = None
    with live or contextlib.nullcontext():
        while not worker.stop.is_set():
            await tick()
            frame = progress.frame()
            elapsed = frame.elapsed_s
            if live is not None:
                live.update(_view(frame), refresh=True)
            elif elapsed - last_plain >= _PLAIN_STATUS_EVERY_S:
                last_plain = elapsed
                console.print(_plain(frame), highlight=False)
            if drain_deadline is None and elapsed >= options.duration_s:
                fleet_stop.set()  # the fleet stops; the daemon gets to finish what it sent
                drain_deadline = time.monotonic() + _DRAIN_TIMEOUT_S
            if drain_deadline is not None and (
                time.monotonic() > drain_deadline or await drained()
            ):
                return


def _key_set(secretsmanager: Any, settings: Settings) -> tuple[bool, FleetSigner]:
    """Create the key set secret unless it exists, and read it as the fleet reads it; (whether
    it was created, the fleet's signer)."""
    assert settings.auth_keys_secret_id is not None
    created = create_key_set_secret(secretsmanager, settings.auth_keys_secret_id)
    keys = read_key_set(settings)
    # A key set kept from before may hold several keys: the newest signs (ids sort by date).
    return created, FleetSigner(keys, max(keys.keys))


def _senders(signer: FleetSigner, options: DemoOptions) -> _Fleet:
    """The fleet's devices; the rogue holds the first one's key and claims to be the second."""
    devices = device_ids(options.devices, options.seed)
    rng = random.Random(options.seed + 1)  # the rogue's own: the fleet's stays as it was
    victim = devices[1] if len(devices) > 1 else str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return _Fleet(devices, signer, Rogue(signer.device(devices[0]), victim, rng))


def _device_order(records: list[dict[str, Any]], bodies: list[str], console: Console) -> bool:
    """FIFO: print whether each device's submissions are in the stream in the order sent."""
    order = verify_device_order(records, expected_device_order(bodies))
    console.print("device order: " + order.summary(), highlight=False, soft_wrap=True)
    return order.ok and order.pairs > 0


async def _run(world: World, clients: _Clients, options: DemoOptions, console: Console) -> int:
    console.print(f"queue  {world.queue_url}\nDLQ    {world.dlq_url}\nstream {world.stream_name}")
    if world.fifo:
        console.print(_FIFO_NOTE)
    settings = Settings(
        endpoint_url=world.endpoint_url,
        aws_region=world.region,
        queue_url=world.queue_url,
        dlq_url=world.dlq_url,
        stream_name=world.stream_name,
        wait_time_seconds=1,
        metrics_port=options.metrics_port,
        metrics_host="127.0.0.1",
        auth_mode=AuthMode.ENFORCE,
        auth_keys_secret_id=KEY_SET_SECRET_NAME,
        auth_keys_file=None,  # one source: not one from the environment as well
    )
    try:
        created, signer = await asyncio.to_thread(_key_set, clients.secretsmanager, settings)
    except (aws.UsageError, aws.ToolError) as exc:
        console.print(f"the key set is unusable: {exc}", highlight=False)
        return 1
    console.print(
        f"keys   secret {KEY_SET_SECRET_NAME} ({'created' if created else 'kept as it was'}); "
        f"the fleet signs with key id {signer.key_id}, the daemon enforces (AUTH_MODE=enforce)",
        highlight=False,
        soft_wrap=True,
    )
    registry = CollectorRegistry()
    daemon, worker = await _start_daemon(settings, registry)
    if worker is None and options.metrics_port:
        # Most likely the metrics port is taken (node_exporter uses 9100 too): the demo
        # does not need that port, so it takes any free one rather than failing.
        settings = settings.model_copy(update={"metrics_port": free_port()})
        options = replace(options, metrics_port=settings.metrics_port)
        registry = CollectorRegistry()  # the failed start registered its metrics already
        daemon, worker = await _start_daemon(settings, registry)
    if worker is None:
        console.print(f"the daemon did not start (exit {daemon.result()})")
        return 1
    if options.metrics_port:
        console.print(f"metrics at http://127.0.0.1:{options.metrics_port}/metrics")

    bodies: list[str] = []
    fleet_stop = asyncio.Event()
    senders = _senders(signer, options)
    sender = Sender(clients.sqs, world.queue_url)
    fleet = asyncio.create_task(_fleet(sender, senders, options, fleet_stop, bodies))
    progress = _Progress(registry, bodies, senders.rogue)

    async def drained() -> bool:
        return await asyncio.to_thread(queue_depth, clients.sqs, world.queue_url) == 0

    await _watch(
        worker=worker,
        progress=progress,
        options=options,
        console=console,
        drained=drained,
        fleet_stop=fleet_stop,
    )
    interrupted = worker.stop.is_set()
    fleet_stop.set()
    await fleet
    worker.stop.set()
    code = await daemon
    final = progress.frame()
    console.print(_view(final))

    raw = await asyncio.to_thread(read_stream, clients.kinesis, world.stream_name)
    records = decode_records(raw)
    # The fleet's submissions only: every event it signed (and the contract accepts) arrived.
    result = verify(records, expected_sequences(bodies))
    console.print("verification: " + result.summary(), highlight=False, soft_wrap=True)
    ordered = not world.fifo or _device_order(records, bodies, console)
    ours = [r for r in records if r["submission_id"] in result.firsts]
    for record in ours[:3]:
        sample = {k: v for k, v in record.items() if not k.startswith("_")}
        console.print(f"sample record: {sample}", highlight=False, soft_wrap=True)
    rogue = senders.rogue.verdict(
        final.snap.by("submissions_rejected_total", "reason"),
        [str(r.get("submission_id")) for r in records],
    )
    for line in rogue.lines():
        console.print(line, highlight=False, soft_wrap=True)
    passed = code == 0 and result.ok and result.records > 0 and rogue.ok and ordered
    if interrupted:
        console.print("interrupted: what was still queued is not verified as published")
    console.print("RESULT: " + ("PASS" if passed else "FAIL"))
    return 0 if passed else 1
