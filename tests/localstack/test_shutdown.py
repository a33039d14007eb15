"""SIGTERM with a backlog on LocalStack: the daemon drains within its grace and exits 0, and the
next one takes the rest; read back, nothing is lost or reordered."""

from __future__ import annotations

from pathlib import Path

import pytest

from devworld.emulator import World
from devworld.localstack_host import compose_service, seconds
from devworld.verify import verify
from event_processor.tools.aws import queue_counts
from tests.helpers import wait_for
from tests.localstack.support import (
    LocalStack,
    daemon,
    fleet_load,
    stream_records,
    wait_drained,
    world_env,
)

pytestmark = pytest.mark.localstack

SUBMISSIONS = 2000
SEED = 31
# SIGTERM once this many events are out, so that most of the backlog is still queued.
STOP_AFTER_EVENTS = 3000


def test_sigterm_during_a_backlog_then_restart_drains(
    localstack: LocalStack, fresh_world: World, tmp_path: Path
) -> None:
    """SIGTERM mid-backlog: exit 0 within the grace, held messages released; a restart drains."""
    world = fresh_world
    load = fleet_load(localstack, SUBMISSIONS, SEED, QUEUE_URL=world.queue_url)
    expected = load.expected()
    compose = localstack.compose_env("event-processor")
    grace_s = float(compose["SHUTDOWN_GRACE_SECONDS"])
    # docker-compose.yaml's stop_grace_period: what Docker waits for before its SIGKILL.
    kill_after_s = seconds(compose_service("event-processor")["stop_grace_period"])
    log = tmp_path / "daemon.log"
    with daemon(localstack, log, **world_env(world)) as first:
        wait_for(
            lambda: first.total("event_processor_events_published_total") >= STOP_AFTER_EVENTS,
            120,
            f"{STOP_AFTER_EVENTS} events published",
            interval_s=0.2,
        )
        code, took = first.terminate()
    visible, _ = queue_counts(localstack.client("sqs"), world.queue_url)
    print(
        f"\n[shutdown] {load.report}; SIGTERM: exit {code} after {took:.1f} s (grace {grace_s:g} s)"
    )
    assert code == 0
    assert took < kill_after_s, f"{took:.1f} s: Docker would have killed it"
    assert first.actions("stopped"), "no `stopped` log line"
    assert visible > 0, "the backlog was gone before the SIGTERM: nothing tested"
    # Released with visibility 0: nothing stays hidden for a visibility timeout.
    wait_for(
        lambda: queue_counts(localstack.client("sqs"), world.queue_url)[1] == 0,
        10,
        "held messages released",
    )
    with daemon(localstack, log, **world_env(world)) as second:
        took = wait_drained(localstack, world, 600, second)
        code, _ = second.terminate()
    assert code == 0
    result = verify(stream_records(localstack, world), expected)
    print(f"[shutdown] restart drained the rest in {took:.0f} s: {result.summary()}")
    assert result.ok, result.summary()
    assert result.firsts == expected
