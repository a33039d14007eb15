"""The console script as a user runs it: env config, JSON logs, SIGTERM, exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import orjson
import pytest

from devworld.emulator import Emulator, World
from tests.factories import encode, submission
from tests.helpers import eventually, queue_depth, send_bodies, stream_records

pytestmark = pytest.mark.e2e


def cli_env(emulator: Emulator, world: World, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **emulator.client_env(),
        "QUEUE_URL": world.queue_url,
        "DLQ_URL": world.dlq_url,
        "STREAM_NAME": world.stream_name,
        "WAIT_TIME_SECONDS": "1",
        "METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


async def test_sigterm_drains_and_exits_zero(emulator: Emulator, world: World) -> None:
    """Configured by env, the daemon publishes, then exits 0 on SIGTERM with JSON logs."""
    bodies = [encode(submission()) for _ in range(20)]
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, bodies)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "event_processor",
        "run",
        env=cli_env(emulator, world, LOG_FORMAT="json"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await eventually(
            lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
            timeout_s=60,
        )
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    lines = [orjson.loads(line) for line in err.decode().splitlines() if line.strip()]
    actions = [line.get("action") for line in lines]
    assert "running" in actions
    assert "stop" in actions
    assert "stopped" in actions
    records = await asyncio.to_thread(stream_records, emulator, world)
    assert len(records) == 60


def test_missing_stream_is_a_startup_failure(emulator: Emulator, world: World) -> None:
    """A stream that does not exist stops start-up with exit code 3 and says why."""
    result = subprocess.run(
        [sys.executable, "-m", "event_processor", "run", "--stream-name", "no-such-stream"],
        env=cli_env(emulator, world),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3
    assert b"start-up failed" in result.stderr


def test_invalid_setting_exit_code(emulator: Emulator, world: World) -> None:
    """An invalid env setting exits 2 before touching AWS."""
    result = subprocess.run(
        [sys.executable, "-m", "event_processor", "run"],
        env=cli_env(emulator, world, BATCH_SIZE="50"),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"BATCH_SIZE" in result.stderr


def test_busy_metrics_port_is_a_startup_failure(emulator: Emulator, world: World) -> None:
    """A metrics port already taken stops start-up with exit code 3 and says why."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "event_processor", "run"],
            env=cli_env(emulator, world, METRICS_PORT=str(port), METRICS_HOST="127.0.0.1"),
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 3
    assert b"cannot serve metrics" in result.stderr
