"""Several replicas on one queue and stream, one killed mid-run: the delivery guarantee.

At least once, ordered per submission, deduplicable: every valid event is in the stream, the
first occurrences of each submission's events are in order, and every duplicate carries the
event_id of its first copy.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys

import pytest

from devworld.emulator import Emulator, World, read_stream
from devworld.verify import decode_records, expected_sequences, verify
from tests.factories import encode, fleet_like
from tests.helpers import client, eventually, queue_counts, queue_depth, send_bodies

pytestmark = pytest.mark.e2e

REPLICAS = 3
# Short, so that the killed replica's messages come back within the test.
VISIBILITY_S = 3


async def start_replica(emulator: Emulator, world: World) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        **emulator.client_env(),
        "QUEUE_URL": world.queue_url,
        "DLQ_URL": world.dlq_url,
        "STREAM_NAME": world.stream_name,
        "WAIT_TIME_SECONDS": "1",
        "VISIBILITY_TIMEOUT": str(VISIBILITY_S),
        "MAX_IN_FLIGHT": "50",
        "METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "event_processor", "run", env=env, stderr=subprocess.DEVNULL
    )


def stream_size(emulator: Emulator, world: World) -> int:
    return len(read_stream(client(emulator, "kinesis"), world.stream_name))


async def test_three_replicas_one_killed(emulator: Emulator, world: World) -> None:
    """Kill -9 one of three replicas mid-run: nothing lost, first occurrences in order, dups keep ids."""
    rng = random.Random(3)
    bodies = [encode(fleet_like(rng)) for _ in range(600)]
    expected = expected_sequences(bodies)
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, bodies)
    # The first replica starts alone, so that it is surely mid-run, with submissions half
    # published, when the others have joined and it is killed.
    replicas = [await start_replica(emulator, world)]
    try:
        await eventually(
            lambda: asyncio.to_thread(lambda: stream_size(emulator, world) > 300),
            timeout_s=60,
            interval_s=0.2,
        )
        replicas += [await start_replica(emulator, world) for _ in range(REPLICAS - 1)]
        await eventually(
            lambda: asyncio.to_thread(lambda: stream_size(emulator, world) > 1000),
            timeout_s=60,
            interval_s=0.2,
        )
        in_flight = await asyncio.to_thread(queue_counts, emulator, world.queue_url)
        replicas[0].send_signal(signal.SIGKILL)
        assert await replicas[0].wait() == -signal.SIGKILL
        await eventually(
            lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
            timeout_s=90,
        )
        for replica in replicas[1:]:
            replica.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(r.wait(), timeout=30) for r in replicas[1:]]
        assert codes == [0] * (REPLICAS - 1)
    finally:
        for replica in replicas:
            if replica.returncode is None:
                replica.kill()
                await replica.wait()

    raw = await asyncio.to_thread(read_stream, client(emulator, "kinesis"), world.stream_name)
    result = verify(decode_records(raw), expected)
    print(
        f"\n[replicas] {REPLICAS} replicas, one killed with {in_flight[1]} messages in flight "
        f"(all replicas): {result.summary()}"
    )
    assert result.ok, result.summary()
    assert result.firsts == expected
