"""Start-up as the operator sees it: `run`'s exit code and log line, `check`'s report."""

from __future__ import annotations

import orjson
import pytest

from devworld.emulator import Emulator, World
from event_processor import exitcodes
from tests.helpers import daemon_env, run_cli

pytestmark = pytest.mark.e2e


def test_a_missing_queue_exits_3_with_a_structured_log_line(
    emulator: Emulator, world: World
) -> None:
    """`run` with a QUEUE_NAME that does not exist: exit 3, one JSON startup_failed line that
    names the queue, QUEUE_NAME, the region and the endpoint (from AWS_ENDPOINT_URL)."""
    env = daemon_env(emulator, world, LOG_FORMAT="json", QUEUE_NAME="no-such-queue")
    del env["QUEUE_URL"]
    result = run_cli("event-processor", "run", env=env)
    assert result.returncode == exitcodes.STARTUP_FAILED, result.stderr
    [line] = [
        doc
        for doc in (orjson.loads(x) for x in result.stderr.splitlines() if x.startswith("{"))
        if doc.get("action") == "startup_failed"
    ]
    assert line["message"] == "start-up failed"
    assert line["error"].startswith(
        "source queue no-such-queue does not exist (QUEUE_NAME / --queue-name;"
    )
    assert line["setting"] == "QUEUE_NAME / --queue-name"
    assert line["region"] == emulator.region
    assert line["endpoint"] == f"{emulator.endpoint_url} (AWS_ENDPOINT_URL)"


def test_check_prints_the_report_and_exits_0(emulator: Emulator, world: World) -> None:
    """`check` on a fit world: exit 0, the effective settings and one line a check on stdout."""
    result = run_cli("event-processor", "check", env=daemon_env(emulator, world))
    assert result.returncode == exitcodes.OK, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "settings (secrets masked):"
    assert any(line.split() == ["stream_name", world.stream_name] for line in lines)
    statuses = {line.split()[1]: line.split()[0] for line in lines[lines.index("checks:") + 1 : -1]}
    assert statuses == {
        "region": "ok",
        "source": "ok",
        "stream": "ok",
        "DLQ": "ok",
        "metrics": "skipped",
        "key": "skipped",
    }


def test_check_json_names_the_failure_and_run_s_exit_code(emulator: Emulator, world: World) -> None:
    """`check --json` with a missing stream: exit 3; the stream's entry is FAILED with its
    resource and setting, the other checks still made."""
    env = daemon_env(emulator, world, STREAM_NAME="no-such-stream")
    result = run_cli("event-processor", "check", "--json", env=env)
    assert result.returncode == exitcodes.STARTUP_FAILED, result.stderr
    report = orjson.loads(result.stdout)
    assert report["exit_code"] == exitcodes.STARTUP_FAILED
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["stream"]["status"] == "FAILED"
    assert checks["stream"]["resource"] == "stream no-such-stream"
    assert checks["stream"]["setting"] == "STREAM_NAME / --stream-name"
    assert checks["DLQ"]["status"] == "ok"
    assert report["settings"]["stream_name"] == "no-such-stream"


def test_check_with_invalid_settings_exits_2(emulator: Emulator, world: World) -> None:
    """Invalid settings: exit 2 with every bad one named, as `run` does, before any call."""
    env = daemon_env(emulator, world, BATCH_SIZE="50")
    result = run_cli("event-processor", "check", "--receivers", "0", env=env)
    assert result.returncode == exitcodes.USAGE
    assert "BATCH_SIZE (--batch-size)" in result.stderr
    assert "RECEIVERS (--receivers)" in result.stderr
    assert result.stdout == ""
