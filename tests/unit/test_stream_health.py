"""The stream's health from the sink's calls, and the probe while idle (pure logic, no network)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from event_processor.constants import SINK_UNHEALTHY_AFTER_FAILED_CALLS
from event_processor.pipeline.health import StreamHealth
from tests.helpers import eventually


class Probe:
    """Answers as `up` says and counts the probes."""

    def __init__(self, up: bool) -> None:
        self.up = up
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.up


def test_consecutive_failed_calls_mark_it_down_and_one_answer_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Down at the Nth consecutive failure (logged once, with the error), up at the first answer."""
    health = StreamHealth(Probe(up=True))
    caplog.set_level(logging.WARNING, logger="event_processor")
    for _ in range(SINK_UNHEALTHY_AFTER_FAILED_CALLS - 1):
        health.call_failed("InternalFailure")
    assert health.healthy, "a few failures are a blip"
    health.call_failed("InternalFailure")
    health.call_failed("InternalFailure")
    assert not health.healthy
    health.call_succeeded()
    assert health.healthy
    actions = [(r.__dict__["action"], r.__dict__.get("error")) for r in caplog.records]
    assert actions == [("sink_down", "InternalFailure"), ("sink_up", None)]


def test_an_answer_between_failures_starts_the_count_again() -> None:
    """Failures must be consecutive: an answered call in between resets them."""
    health = StreamHealth(Probe(up=True))
    for _ in range(SINK_UNHEALTHY_AFTER_FAILED_CALLS - 1):
        health.call_failed("InternalFailure")
    health.call_succeeded()
    for _ in range(SINK_UNHEALTHY_AFTER_FAILED_CALLS - 1):
        health.call_failed("InternalFailure")
    assert health.healthy


async def test_wait_returns_at_once_when_up_without_probing() -> None:
    """A healthy stream costs the waiter no call."""
    probe = Probe(up=False)
    health = StreamHealth(probe)
    await asyncio.wait_for(health.wait(probe_interval_s=60, idle=lambda: True), timeout=5)
    assert probe.calls == 0


async def test_an_idle_waiter_probes_until_the_stream_answers() -> None:
    """Down and idle: the waiter probes every interval and returns once a probe is answered."""
    probe = Probe(up=False)
    health = StreamHealth(probe, unhealthy_after=1)
    health.call_failed("InternalFailure")
    waiting = asyncio.create_task(health.wait(probe_interval_s=0.001, idle=lambda: True))
    await eventually(lambda: probe.calls >= 2, timeout_s=5, interval_s=0.001)
    assert not waiting.done()
    probe.up = True
    await asyncio.wait_for(waiting, timeout=5)
    assert health.healthy


async def test_a_busy_waiter_leaves_the_finding_out_to_the_sink_calls() -> None:
    """Down with lanes left: no probe; the waiter returns when a call of the sink is answered."""
    probe = Probe(up=True)
    health = StreamHealth(probe, unhealthy_after=1)
    health.call_failed("InternalFailure")
    asked = 0

    def busy() -> bool:
        nonlocal asked
        asked += 1
        return False

    waiting = asyncio.create_task(health.wait(probe_interval_s=0.001, idle=busy))
    # Asked at each interval: by the third, an idle waiter would have probed twice.
    await eventually(lambda: asked >= 3, timeout_s=5, interval_s=0.001)
    assert not waiting.done()
    health.call_succeeded()
    await asyncio.wait_for(waiting, timeout=5)
    assert probe.calls == 0
