"""End-to-end fixtures: our console scripts as subprocesses, reaped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from devworld.emulator import Emulator, World
from devworld.faultproxy import FaultProxy
from tests.helpers import Cli


@pytest.fixture
def spawn_cli(tmp_path: Path, make_world: Callable[..., World]) -> Iterator[Callable[..., Cli]]:
    """Factory: start `event-processor ARGS` with `env`, its log in `<name>.log`; every process
    is killed (if still running) and reaped at teardown.

    It asks for `make_world` only to be torn down first: processes stop before their worlds go.
    """
    started: list[Cli] = []

    def start(name: str, *args: str, env: Mapping[str, str]) -> Cli:
        running = Cli.start(tmp_path / f"{name}.log", *args, env=env)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            if running.process.poll() is None:
                running.process.kill()
            running.process.wait(timeout=30)


@pytest.fixture
def cli(
    emulator: Emulator, world: World, proxy: FaultProxy, spawn_cli: Callable[..., Cli]
) -> Callable[..., Cli]:
    """Factory: start `event-processor run` against `world` through the proxy (or, with
    through_proxy=False, straight to the emulator), with flags."""

    def start(name: str, *flags: str, through_proxy: bool = True) -> Cli:
        env = {**emulator.client_env(), "PYTHONUNBUFFERED": "1"}
        endpoint_url = proxy.endpoint_url if through_proxy else emulator.endpoint_url
        return spawn_cli(
            name,
            "run",
            "--endpoint-url", endpoint_url,
            "--queue-url", world.queue_url,
            "--dlq-url", world.dlq_url,
            "--stream-name", world.stream_name,
            "--metrics-port", "0",
            "--wait-time-seconds", "1",
            "--log-format", "json",
            *flags,
            env=env,
        )  # fmt: skip

    return start
