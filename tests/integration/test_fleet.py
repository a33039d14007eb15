"""The sensor-fleet console script's modes against the embedded emulator."""

from __future__ import annotations

import os
import subprocess

import pytest

from devworld.emulator import Emulator, World, free_port
from event_processor.config import Settings
from event_processor.models import Submission, parse_submission
from sensor_fleet.sender import Sender, sqs_client
from tests.helpers import drain_queue, run_cli


def fleet(emulator: Emulator, world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """`sensor-fleet ARGS` to completion, sending to `world`'s queue on the emulator."""
    env = {**os.environ, **emulator.client_env(), "QUEUE_URL": world.queue_url}
    env.pop("LOCALSTACK_HOST", None)
    return run_cli("sensor-fleet", *args, env=env, timeout_s=120)


def test_simulate_sends_one_submission_per_device_per_round(
    emulator: Emulator, world: World
) -> None:
    """simulate: FLEET_SIZE devices, one submission each per round, fixed device ids."""
    result = fleet(
        emulator,
        world,
        "--seed",
        "5",
        "simulate",
        "--fleet-size",
        "4",
        "--rounds",
        "3",
        "--round-min",
        "0",
        "--round-max",
        "0",
        "--invalid-probability",
        "0",
    )
    assert result.returncode == 0, result.stderr
    messages = drain_queue(emulator, world.queue_url)
    assert len(messages) == 12
    parsed = [parse_submission(m["Body"]) for m in messages]
    assert all(isinstance(p, Submission) and not p.rejected for p in parsed)
    assert len({p.device_id for p in parsed if isinstance(p, Submission)}) == 4


def test_load_count_prints_what_it_sent(emulator: Emulator, world: World) -> None:
    """load --count N sends N submissions and says so."""
    result = fleet(emulator, world, "load", "--count", "123")
    assert result.returncode == 0, result.stderr
    assert "sent 123 submissions" in result.stdout
    assert len(drain_queue(emulator, world.queue_url)) == 123


def test_load_rate_sends_rate_times_duration(emulator: Emulator, world: World) -> None:
    """load --rate R --duration S sends R*S submissions."""
    result = fleet(emulator, world, "load", "--rate", "40", "--duration", "1")
    assert result.returncode == 0, result.stderr
    assert len(drain_queue(emulator, world.queue_url)) == 40


def test_host_mode_runs_and_sends_only_valid_submissions(emulator: Emulator, world: World) -> None:
    """host: scans this machine; whatever it reports is a valid submission."""
    result = fleet(emulator, world, "host", "--rounds", "2", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    assert "device " in result.stdout
    for message in drain_queue(emulator, world.queue_url):
        assert isinstance(parse_submission(message["Body"]), Submission)


def test_sender_survives_unreachable_sqs(monkeypatch: pytest.MonkeyPatch) -> None:
    """With SQS unreachable, send() gives up after its ride-out time instead of raising."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens
    monkeypatch.delenv("LOCALSTACK_HOST", raising=False)
    sqs = sqs_client(localstack=False, settings=Settings(aws_region="eu-west-1"))
    sender = Sender(sqs, "http://127.0.0.1:1/123456789012/q", outage_ride_s=0.5)
    assert sender.send(["x"] * 3) == []
    assert sender.dropped == 3


def test_localstack_client_is_used_when_asked(emulator: Emulator, world: World) -> None:
    """--localstack goes through localstack-client, which honours AWS_ENDPOINT_URL."""
    result = fleet(emulator, world, "--localstack", "load", "--count", "5")
    assert result.returncode == 0, result.stderr
    assert len(drain_queue(emulator, world.queue_url)) == 5
