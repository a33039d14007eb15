"""`make run`'s command as a newcomer runs it: the demo ends with a passing verification."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess

import pytest

from devworld.emulator import KEY_SET_SECRET_NAME, Emulator
from tests.helpers import check_rogue_refused, run_cli

pytestmark = pytest.mark.e2e


def demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`event-processor demo ARGS` to completion (metrics on any free port unless ARGS say)."""
    return run_cli(
        "event-processor",
        "demo",
        "--metrics-port",
        "0",
        *args,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        timeout_s=180,
    )


def test_demo_on_the_embedded_emulator_verifies() -> None:
    """The demo starts its own emulator, runs a signing fleet, a rogue device and the daemon in
    enforce mode, and verifies the stream and the rogue's rejections."""
    result = demo("--duration", "4", "--invalid-probability", "0.05")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT: PASS" in result.stdout
    assert "missing 0, unexpected 0, out of order 0" in result.stdout
    assert "sample record:" in result.stdout
    assert "the daemon enforces (AUTH_MODE=enforce)" in result.stdout
    check_rogue_refused(result.stdout)


def test_demo_on_fifo_queues_keeps_each_device_in_order() -> None:
    """--fifo: a FIFO queue and DLQ, a message group per device; the demo passes only if, on
    top of the usual check, each device's submissions are in the stream in the order sent."""
    result = demo("--duration", "5", "--fifo", "--invalid-probability", "0.05")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT: PASS" in result.stdout
    assert "/submissions.fifo" in result.stdout
    assert "missing 0, unexpected 0, out of order 0" in result.stdout
    [line] = [x for x in result.stdout.splitlines() if x.startswith("device order: ")]
    assert line.endswith("interleaved or reversed 0, devices split across shards 0")
    devices, pairs = (
        int(x.split()[0]) for x in line.removeprefix("device order: ").split(", ")[:2]
    )
    assert devices == 10
    assert pairs >= 10 * 2, "several submissions a device"
    check_rogue_refused(result.stdout)


def test_demo_against_an_existing_endpoint_twice(emulator: Emulator) -> None:
    """--endpoint-url reuses an existing world and key set secret (as a LocalStack has); a
    second run still verifies."""
    env = {k: v for k, v in emulator.client_env().items() if k != "AWS_ENDPOINT_URL"}
    secrets = emulator.boto3_client("secretsmanager")
    with contextlib.suppress(secrets.exceptions.ResourceNotFoundException):
        secrets.delete_secret(SecretId=KEY_SET_SECRET_NAME, ForceDeleteWithoutRecovery=True)
    for run in range(2):
        result = demo("--duration", "2", "--endpoint-url", emulator.endpoint_url, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "RESULT: PASS" in result.stdout
        assert emulator.endpoint_url in result.stdout
        # The key set secret: made by the first run, kept by the second.
        assert ("(created)" if run == 0 else "(kept as it was)") in result.stdout


def test_demo_takes_another_port_when_9100_is_busy() -> None:
    """With the metrics port taken (node_exporter's 9100, say), the demo still runs and passes."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = demo("--duration", "2", "--metrics-port", str(port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT: PASS" in result.stdout
    assert f"127.0.0.1:{port}/metrics" not in result.stdout
