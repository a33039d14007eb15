"""End-to-end fixtures: the CLI as a subprocess through the fault proxy."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devworld.emulator import Emulator, World
from devworld.faultproxy import FaultProxy
from tests.helpers import Cli


@pytest.fixture
def cli(
    emulator: Emulator, world: World, proxy: FaultProxy, tmp_path: Path
) -> Iterator[Callable[..., Cli]]:
    """Factory: start the CLI against `world` through the proxy; every one is reaped at teardown."""
    started: list[Cli] = []

    def start(name: str, *flags: str) -> Cli:
        log_path = tmp_path / f"{name}.log"
        env = {**emulator.client_env(), "PYTHONUNBUFFERED": "1"}
        command = [
            sys.executable, "-m", "event_processor", "run",
            "--endpoint-url", proxy.endpoint_url,
            "--queue-url", world.queue_url,
            "--dlq-url", world.dlq_url,
            "--stream-name", world.stream_name,
            "--metrics-port", "0",
            "--wait-time-seconds", "1",
            "--log-format", "json",
            *flags,
        ]  # fmt: skip
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        running = Cli(process, log_path)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
        running.process.wait(timeout=30)
