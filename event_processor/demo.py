"""`event-processor demo`: the whole pipeline on the embedded emulator, verified at the end.

Starts moto in-process, creates the queue, DLQ and a 2-shard stream, runs a sped-up fleet
and the daemon together, then reads the stream back and checks that nothing valid was lost
and that order held per submission. Exit 0 only if that verification passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from aiobotocore.session import get_session
from prometheus_client import CollectorRegistry

from event_processor import app, constants
from event_processor.config import Settings
from event_processor.emulator import (
    DUMMY_ACCESS_KEY_ID,
    DUMMY_SECRET_ACCESS_KEY,
    Emulator,
    World,
    queue_depth,
    read_stream,
)
from event_processor.verify import decode_records, expected_sequences, verify
from sensor_fleet.generator import device_ids, encode, make_submission

if TYPE_CHECKING:
    from event_processor.worker import Worker

# How long the end of the demo waits for the daemon to empty the queue.
_DRAIN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 30.0
    devices: int = 10
    round_interval_s: float = 1.0  # the real fleet waits 30-45 s; the demo is sped up
    invalid_probability: float = 0.01
    metrics_port: int = 9100
    seed: int = 1


def emulator_credentials() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
    }


def _metric(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


def _sum(registry: CollectorRegistry, name: str) -> float:
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


def _status(registry: CollectorRegistry, elapsed_s: float, sent: int) -> str:
    published = _sum(registry, "event_processor_events_published_total")
    rate = published / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"[{elapsed_s:5.1f}s] sent {sent} | received "
        f"{_metric(registry, 'event_processor_messages_received_total'):.0f} | published "
        f"{published:.0f} events ({rate:.0f}/s) | rejected submissions "
        f"{_sum(registry, 'event_processor_submissions_rejected_total'):.0f}, events "
        f"{_sum(registry, 'event_processor_events_rejected_total'):.0f} | DLQ "
        f"{_sum(registry, 'event_processor_dlq_messages_sent_total'):.0f} | in flight "
        f"{_metric(registry, 'event_processor_in_flight_submissions'):.0f}"
    )


async def _fleet(
    world: World, options: DemoOptions, stop: asyncio.Event, bodies: list[str]
) -> None:
    """Every round, each device sends one submission; SendMessageBatch, ten at a time."""
    rng = random.Random(options.seed)
    devices = device_ids(options.devices, options.seed)
    session = get_session()
    async with session.create_client(
        "sqs", region_name=world.region, endpoint_url=world.endpoint_url
    ) as sqs:
        while not stop.is_set():
            round_bodies = [
                encode(make_submission(rng, d, options.invalid_probability)) for d in devices
            ]
            for start in range(0, len(round_bodies), constants.SQS_MAX_BATCH_ENTRIES):
                chunk = round_bodies[start : start + constants.SQS_MAX_BATCH_ENTRIES]
                await sqs.send_message_batch(
                    QueueUrl=world.queue_url,
                    Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(chunk)],
                )
                bodies.extend(chunk)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(options.round_interval_s):
                    await stop.wait()


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    # The embedded emulator takes any credentials; the daemon's SDK still wants some.
    for key, value in emulator_credentials().items():
        os.environ.setdefault(key, value)
    emulator = Emulator()
    await asyncio.to_thread(emulator.start)
    try:
        world = await asyncio.to_thread(emulator.create_world)
        print(f"embedded AWS emulator (moto, patched) at {world.endpoint_url}", file=out)
        print(
            f"queue {world.queue_url}\nDLQ   {world.dlq_url}\nstream {world.stream_name} (2 shards)",
            file=out,
        )
        return await _run(emulator, world, options, out)
    finally:
        await asyncio.to_thread(emulator.stop)


async def _run(emulator: Emulator, world: World, options: DemoOptions, out: TextIO) -> int:
    settings = Settings(
        endpoint_url=world.endpoint_url,
        aws_region=world.region,
        queue_url=world.queue_url,
        dlq_url=world.dlq_url,
        stream_name=world.stream_name,
        wait_time_seconds=1,
        metrics_port=options.metrics_port,
        metrics_host="127.0.0.1",
    )
    registry = CollectorRegistry()
    started: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
    hooks = app.Hooks(registry=registry, on_started=lambda w, _: started.set_result(w))
    daemon = asyncio.create_task(app.run(settings, hooks))
    worker = await started
    if options.metrics_port:
        print(f"metrics at http://127.0.0.1:{options.metrics_port}/metrics", file=out)

    bodies: list[str] = []
    fleet_stop = asyncio.Event()
    fleet = asyncio.create_task(_fleet(world, options, fleet_stop, bodies))
    began = time.monotonic()
    # Run for the duration, or until Ctrl-C (which also stops the daemon).
    while time.monotonic() - began < options.duration_s and not worker.stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await worker.stop.wait()
        print(_status(registry, time.monotonic() - began, len(bodies)), file=out, flush=True)
    fleet_stop.set()
    await fleet

    sqs = emulator.boto3_client("sqs")
    deadline = time.monotonic() + _DRAIN_TIMEOUT_S
    while not worker.stop.is_set() and time.monotonic() < deadline:
        if await asyncio.to_thread(queue_depth, sqs, world.queue_url) == 0:
            break
        await asyncio.sleep(0.2)
    worker.stop.set()
    code = await daemon
    print(_status(registry, time.monotonic() - began, len(bodies)), file=out)

    raw = await asyncio.to_thread(read_stream, emulator.boto3_client("kinesis"), world.stream_name)
    records = decode_records(raw)
    result = verify(records, expected_sequences(bodies))
    print("\nverification: " + result.summary(), file=out)
    for record in records[:3]:
        sample = {k: v for k, v in record.items() if not k.startswith("_")}
        print(f"sample record: {sample}", file=out)
    passed = code == 0 and result.ok and result.records > 0
    print("RESULT: " + ("PASS" if passed else "FAIL"), file=out)
    return 0 if passed else 1
