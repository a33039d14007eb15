"""The console script as a user runs it: env config, JSON logs, SIGTERM, exit codes."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable

import pytest

from devworld.emulator import Emulator, World
from tests.factories import encode, submission
from tests.helpers import (
    Cli,
    daemon_env,
    queue_depth,
    run_cli,
    send_bodies,
    stream_records,
    wait_for,
)

pytestmark = pytest.mark.e2e


def test_sigterm_drains_and_exits_zero(
    emulator: Emulator, world: World, spawn_cli: Callable[..., Cli]
) -> None:
    """Configured by env, the daemon publishes, then exits 0 on SIGTERM with JSON logs."""
    bodies = [encode(submission()) for _ in range(20)]
    send_bodies(emulator, world.queue_url, bodies)
    daemon = spawn_cli("daemon", "run", env=daemon_env(emulator, world, LOG_FORMAT="json"))

    def drained() -> bool:
        assert daemon.process.poll() is None, daemon.log_path.read_text()
        return queue_depth(emulator, world.queue_url) == 0

    wait_for(drained, 60.0, "the daemon draining the queue", interval_s=0.05)
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=30) == 0, daemon.log_path.read_text()
    written = [line for line in daemon.log_path.read_bytes().splitlines() if line.strip()]
    assert len(daemon.logs()) == len(written), "a log line that is not JSON"
    actions = [line.get("action") for line in daemon.logs()]
    assert "running" in actions
    assert "stop" in actions
    assert "stopped" in actions
    records = stream_records(emulator, world)
    assert len(records) == 60


def test_missing_stream_is_a_startup_failure(emulator: Emulator, world: World) -> None:
    """A stream that does not exist stops start-up with exit code 3 and says why."""
    result = run_cli(
        "event-processor", "run", "--stream-name", "no-such-stream", env=daemon_env(emulator, world)
    )
    assert result.returncode == 3
    assert "start-up failed" in result.stderr


def test_invalid_setting_exit_code(emulator: Emulator, world: World) -> None:
    """An invalid env setting exits 2 before touching AWS."""
    result = run_cli("event-processor", "run", env=daemon_env(emulator, world, BATCH_SIZE="50"))
    assert result.returncode == 2
    assert "BATCH_SIZE" in result.stderr


def test_busy_metrics_port_is_a_startup_failure(emulator: Emulator, world: World) -> None:
    """A metrics port already taken stops start-up with exit code 3 and says why."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = daemon_env(emulator, world, METRICS_PORT=str(port), METRICS_HOST="127.0.0.1")
        result = run_cli("event-processor", "run", env=env)
    assert result.returncode == 3
    assert "cannot serve metrics" in result.stderr
