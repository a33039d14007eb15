"""Shared fixtures: one embedded emulator per session, a fresh world and registry per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from devworld.emulator import Emulator, World, patch_moto_dispatch
from devworld.faultproxy import FaultProxy
from event_processor import app
from event_processor.config import Settings
from event_processor.pipeline.worker import Worker
from event_processor.retry import RetryPolicy

# Backoffs short enough that retries never dominate a test's runtime.
FAST_POLICY = RetryPolicy(initial_s=0.01, max_backoff_s=0.2)
# The LocalStack tier: it needs a running LocalStack, so only `make test-localstack` collects it.
LOCALSTACK_TESTS = Path(__file__).parent / "localstack"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Skip collecting tests/localstack unless it (or a test in it) is named on the command line."""
    if collection_path != LOCALSTACK_TESTS:
        return None
    named = (Path(arg.split("::")[0]).resolve() for arg in config.args)
    return None if any(path.is_relative_to(LOCALSTACK_TESTS) for path in named) else True


@pytest.fixture(scope="session", autouse=True)
def _aws_credentials() -> Iterator[None]:
    """Dummy credentials for every client; never a real account."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"  # noqa: S105 - a dummy
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """One emulator per session (per pytest-xdist worker), with moto's dispatch made cheaper."""
    patch_moto_dispatch()
    with Emulator() as emu:
        yield emu


@pytest.fixture
def proxy(emulator: Emulator) -> Iterator[FaultProxy]:
    """A fault proxy in front of the emulator, without faults until the test sets them."""
    with FaultProxy(emulator.endpoint_url, seed=20261122) as started:
        yield started


@pytest.fixture
def make_world(emulator: Emulator) -> Iterator[Callable[..., World]]:
    """Factory: a queue, DLQ and stream with names no other test uses (create_world's options
    and names may be given); every world made is deleted at teardown."""
    made: list[World] = []

    def make(**options: Any) -> World:
        suffix = uuid.uuid4().hex[:8]
        names = {
            "queue_name": f"submissions-{suffix}",
            "dlq_name": f"submissions-dlq-{suffix}",
            "stream_name": f"events-{suffix}",
        }
        world = emulator.create_world(**{**names, **options})
        made.append(world)
        return world

    try:
        yield make
    finally:
        # Tolerant: a test may have reset or stopped the emulator, or deleted a queue itself.
        for world in reversed(made):
            emulator.delete_world(world)


@pytest.fixture
def world(request: pytest.FixtureRequest, make_world: Callable[..., World]) -> World:
    """A queue, DLQ and 2-shard stream with names no other test uses, deleted at teardown;
    FIFO queues for a test parametrized with `indirect=True` and True."""
    return make_world(visibility_timeout_s=30, fifo=getattr(request, "param", False))


def settings_for(world: World, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "endpoint_url": world.endpoint_url,
        "aws_region": world.region,
        "queue_url": world.queue_url,
        "dlq_url": world.dlq_url,
        "stream_name": world.stream_name,
        "wait_time_seconds": 1,
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
        "shutdown_grace_seconds": 10,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningDaemon:
    worker: Worker
    metrics_port: int
    registry: CollectorRegistry
    task: asyncio.Task[int]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    async def stop(self) -> int:
        self.worker.stop.set()
        return await asyncio.wait_for(self.task, timeout=60)


@pytest.fixture
async def daemon(make_world: Callable[..., World]) -> AsyncIterator[Callable[..., Any]]:
    """Factory: start the daemon in this loop; every one started is stopped at teardown.

    It asks for `make_world` only to be torn down first: daemons stop before their worlds go.
    """
    started: list[RunningDaemon] = []

    async def start(settings: Settings, policy: RetryPolicy = FAST_POLICY) -> RunningDaemon:
        registry = CollectorRegistry()
        ready: asyncio.Future[tuple[Worker, int]] = asyncio.get_running_loop().create_future()
        hooks = app.Hooks(
            registry=registry,
            policy=policy,
            install_signals=False,
            on_started=lambda w, port: ready.set_result((w, port)),
        )
        task = asyncio.create_task(app.run(settings, hooks))
        waiters: list[asyncio.Future[Any]] = [task, ready]
        await asyncio.wait(waiters, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            pytest.fail(f"daemon exited during start-up with code {task.result()}")
        assert ready.done(), "daemon did not start within 30 s"
        worker, port = ready.result()
        running = RunningDaemon(worker, port, registry, task)
        started.append(running)
        return running

    yield start
    for running in started:
        if not running.task.done():
            await running.stop()
