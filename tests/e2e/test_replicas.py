"""Several replicas on one queue and stream, one killed mid-run: the delivery guarantee.

At least once, ordered per submission, deduplicable: every valid event is in the stream, the
first occurrences of each submission's events are in order, and every duplicate carries the
event_id of its first copy.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable

import pytest

from devworld.emulator import Emulator, World, read_stream
from devworld.verify import decode_records, expected_sequences, verify
from tests.factories import encode, fleet_like
from tests.helpers import (
    Cli,
    client,
    daemon_env,
    queue_counts,
    queue_depth,
    send_bodies,
    wait_for,
)

pytestmark = pytest.mark.e2e

REPLICAS = 3
# Short, so that the killed replica's messages come back within the test.
VISIBILITY_S = 3


def start_replica(
    spawn_cli: Callable[..., Cli], emulator: Emulator, world: World, number: int
) -> Cli:
    """One more `event-processor run` on the shared queue and stream, configured by env."""
    env = daemon_env(
        emulator,
        world,
        VISIBILITY_TIMEOUT=str(VISIBILITY_S),
        MAX_IN_FLIGHT="50",
        # Lifecycle lines only, as JSON: the "running" one is waited for (Cli.wait_running).
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
    )
    return spawn_cli(f"replica-{number}", "run", env=env)


def stream_size(emulator: Emulator, world: World) -> int:
    return len(read_stream(client(emulator, "kinesis"), world.stream_name))


def test_three_replicas_one_killed(
    emulator: Emulator, world: World, spawn_cli: Callable[..., Cli]
) -> None:
    """Kill -9 one of three replicas mid-run: nothing lost, first occurrences in order, dups keep ids."""
    rng = random.Random(3)
    bodies = [encode(fleet_like(rng)) for _ in range(600)]
    expected = expected_sequences(bodies)
    send_bodies(emulator, world.queue_url, bodies)
    # The first replica starts alone, so that it is surely mid-run, with submissions half
    # published, when the others have joined and it is killed. (spawn_cli reaps them all.)
    replicas = [start_replica(spawn_cli, emulator, world, 0)]
    wait_for(lambda: stream_size(emulator, world) > 300, 60.0, "300 records", interval_s=0.2)
    replicas += [start_replica(spawn_cli, emulator, world, n) for n in range(1, REPLICAS)]
    # Joined means running (signal handlers installed): on a busy VM the first replica could
    # drain the queue while the others still import, and the SIGTERM below then killed them
    # outright (exit -15) instead of stopping them.
    for replica in replicas[1:]:
        replica.wait_running()
    wait_for(lambda: stream_size(emulator, world) > 1000, 60.0, "1000 records", interval_s=0.2)
    in_flight = queue_counts(emulator, world.queue_url)
    replicas[0].process.send_signal(signal.SIGKILL)
    assert replicas[0].process.wait(timeout=30) == -signal.SIGKILL
    wait_for(
        lambda: queue_depth(emulator, world.queue_url) == 0,
        90.0,
        "the other replicas draining the queue",
        interval_s=0.05,
    )
    for replica in replicas[1:]:
        replica.process.send_signal(signal.SIGTERM)
    codes = [r.process.wait(timeout=30) for r in replicas[1:]]
    assert codes == [0] * (REPLICAS - 1), [r.log_path.read_text() for r in replicas[1:]]

    raw = read_stream(client(emulator, "kinesis"), world.stream_name)
    result = verify(decode_records(raw), expected)
    print(
        f"\n[replicas] {REPLICAS} replicas, one killed with {in_flight[1]} messages in flight "
        f"(all replicas): {result.summary()}"
    )
    assert result.ok, result.summary()
    assert result.firsts == expected
