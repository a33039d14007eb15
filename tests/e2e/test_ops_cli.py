"""The operator tools as a user runs them: `event-processor dlq ...` and `tail`, as subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from typing import Any

import orjson
import pytest

from devworld.emulator import Emulator, World, read_stream
from event_processor.tools.aws import queue_counts
from tests.helpers import cli_command, client, drain_queue, queue_depth, run_cli
from tests.integration.support import (
    ARRAYS,
    BAD_EVENTS,
    GARBAGE,
    HUNDREDS,
    TRACE,
    junk_dlq,
    letters_for,
    mixed_dlq,
    packed_dlq,
    put_letters,
    put_records,
    rejected_by_reason,
    report_table,
    v1_letters,
)

pytestmark = pytest.mark.e2e


def ops_env(emulator: Emulator, world: World, **extra: str) -> dict[str, str]:
    """Configured the way the daemon is: AWS_ENDPOINT_URL, QUEUE_URL, DLQ_URL, STREAM_NAME."""
    env = {k: v for k, v in os.environ.items() if k not in {"QUEUE_NAME", "QUEUE_URL"}}
    return {
        **env,
        **emulator.client_env(),
        "QUEUE_URL": world.queue_url,
        "DLQ_URL": world.dlq_url,
        "STREAM_NAME": world.stream_name,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def cli(
    emulator: Emulator, world: World, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli("event-processor", *args, env=env or ops_env(emulator, world), timeout_s=120)


def counts(emulator: Emulator, queue_url: str) -> tuple[int, int]:
    return queue_counts(client(emulator, "sqs"), queue_url)


def test_inspect_json_counts_and_consumes_nothing(emulator: Emulator, world: World) -> None:
    """`dlq inspect --json` (DLQ_URL from the env) counts by reason; the DLQ is unchanged."""
    mixed_dlq(emulator, world)
    result = cli(emulator, world, "dlq", "inspect", "--json", "--examples", "1")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["read"], doc["sample"]) == (8, False)
    assert {r["reason"]: r["by_kind"] for r in doc["reasons"]} == {
        "invalid_body": {"submission": 3},
        "invalid_field": {"submission": 1, "event": 1},
        "not_an_object": {"submission": 2},
        "none": {"submission": 1},
    }
    assert {r["reason"]: r["events"] for r in doc["reasons"]} == {
        "invalid_body": 0,
        "invalid_field": rejected_by_reason(BAD_EVENTS)["invalid_field"],
        "not_an_object": 0,
        "none": 0,
    }
    assert (doc["by_kind"], doc["events"]) == ({"submission": 7, "event": 1}, 2)
    assert all(len(examples) == 1 for examples in doc["examples"].values())
    assert counts(emulator, world.dlq_url) == (8, 0)


def test_inspect_text_counts_packed_and_version_1_events(emulator: Emulator, world: World) -> None:
    """`dlq inspect` prints events by reason over packed and old letters, and their first events."""
    bodies, letters = packed_dlq(emulator, world)
    old = v1_letters(BAD_EVENTS)
    put_letters(client(emulator, "sqs"), world.dlq_url, old)
    expected = rejected_by_reason(*bodies, BAD_EVENTS)
    result = cli(emulator, world, "dlq", "inspect", "--examples", "1")
    assert result.returncode == 0, result.stderr
    assert (
        f"by kind: 0 submissions, {len(letters) + len(old)} event letters (listing"
        f" {expected.total()} rejected events of {len(bodies) + 1} submissions)"
    ) in result.stdout
    table = report_table(result.stdout)
    assert {reason: int(row[-1]) for reason, row in table.items() if int(row[-1])} == expected
    assert "event 0 new_process field=user: user is empty" in result.stdout
    assert counts(emulator, world.dlq_url) == (len(letters) + len(old), 0)


def test_inspect_text_says_sample(emulator: Emulator, world: World) -> None:
    """The text report says the counts are a sample when the DLQ holds more than --max."""
    put_letters(
        client(emulator, "sqs"), world.dlq_url, [x for i in range(12) for x in letters_for(f"{i}x")]
    )
    result = cli(emulator, world, "dlq", "inspect", "--max", "5", "--dlq-url", world.dlq_url)
    assert result.returncode == 0, result.stderr
    assert "SAMPLE: 5 of ~12 messages" in result.stdout
    assert "invalid_body" in result.stdout
    assert counts(emulator, world.dlq_url) == (12, 0)


def test_inspect_and_dry_run_see_the_whole_dlq(emulator: Emulator, world: World) -> None:
    """Hundreds of letters: inspect and a dry run see all, --limit N says sample; all visible."""
    junk_dlq(emulator, world)
    result = cli(emulator, world, "dlq", "inspect", "--json", "--examples", "1")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["read"], doc["sample"], doc["complete"]) == (HUNDREDS, False, True)
    assert doc["reasons"][0]["by_kind"] == {"submission": HUNDREDS}
    assert counts(emulator, world.dlq_url) == (HUNDREDS, 0)

    result = cli(emulator, world, "dlq", "inspect", "--limit", "40")
    assert result.returncode == 0, result.stderr
    assert f"SAMPLE: 40 of ~{HUNDREDS} messages (stopped at --limit 40)" in result.stdout
    assert counts(emulator, world.dlq_url) == (HUNDREDS, 0)

    result = cli(emulator, world, "dlq", "redrive", "--dry-run", "--verbose")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("would move ") == HUNDREDS + 1  # a line each + the summary
    assert f"would move {HUNDREDS}, skipped 0" in result.stdout
    assert "NOTE" not in result.stdout
    assert counts(emulator, world.dlq_url) == (HUNDREDS, 0)
    assert queue_depth(emulator, world.queue_url) == 0


def test_redrive_by_reason(emulator: Emulator, world: World) -> None:
    """`dlq redrive --reason` moves that reason only and prints moved/skipped/failed."""
    mixed_dlq(emulator, world)
    result = cli(emulator, world, "dlq", "redrive", "--reason", "invalid_body")
    assert result.returncode == 0, result.stderr
    assert "moved 3, skipped 5" in result.stdout
    assert "1 event letter listing 2 rejected events (not submissions)" in result.stdout
    assert "failed 0" in result.stdout
    assert counts(emulator, world.dlq_url) == (5, 0)
    moved = drain_queue(emulator, world.queue_url)
    assert sorted(m["Body"] for m in moved) == GARBAGE
    assert all(set(m["MessageAttributes"]) == set(TRACE) for m in moved)


def test_redrive_resolves_the_queue_by_name(emulator: Emulator, world: World) -> None:
    """Without QUEUE_URL the source queue is QUEUE_NAME, resolved as the daemon does."""
    put_letters(client(emulator, "sqs"), world.dlq_url, letters_for(ARRAYS[0]))
    env = ops_env(emulator, world)
    del env["QUEUE_URL"]
    env["QUEUE_NAME"] = world.queue_url.rsplit("/", 1)[-1]
    result = cli(emulator, world, "dlq", "redrive", env=env)
    assert result.returncode == 0, result.stderr
    assert queue_depth(emulator, world.queue_url) == 1


def test_redrive_dry_run(emulator: Emulator, world: World) -> None:
    """`--dry-run --verbose` lists what would move and changes nothing."""
    mixed_dlq(emulator, world)
    result = cli(emulator, world, "dlq", "redrive", "--dry-run", "--verbose")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("would move ") == 8  # 7 lines + the summary
    assert "dry run, nothing changed: would move 7, skipped 1" in result.stdout
    assert counts(emulator, world.dlq_url) == (8, 0)
    assert queue_depth(emulator, world.queue_url) == 0


def test_redrive_rate(emulator: Emulator, world: World) -> None:
    """`--rate 5` spreads 6 messages over at least one second."""
    put_letters(
        client(emulator, "sqs"), world.dlq_url, [x for i in range(6) for x in letters_for(f"{i}x")]
    )
    started = time.monotonic()
    result = cli(emulator, world, "dlq", "redrive", "--rate", "5")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "moved 6," in result.stdout
    assert elapsed >= (6 - 1) / 5


def test_usage_and_missing_resources(emulator: Emulator, world: World) -> None:
    """No DLQ URL: exit 2; a missing DLQ, stream or shard: exit 3, with the reason."""
    env = ops_env(emulator, world)
    del env["DLQ_URL"]
    result = cli(emulator, world, "dlq", "inspect", env=env)
    assert (result.returncode, "DLQ_URL" in result.stderr) == (2, True)
    missing = world.dlq_url + "-missing"
    result = cli(emulator, world, "dlq", "redrive", "--dlq-url", missing)
    assert result.returncode == 3
    assert f"DLQ {missing} does not exist (DLQ_URL" in result.stderr
    result = cli(emulator, world, "tail", "--stream-name", "no-such-stream", "--no-follow")
    assert result.returncode == 3
    assert "stream no-such-stream does not exist (STREAM_NAME" in result.stderr
    result = cli(emulator, world, "tail", "--shard", "shardId-000000000042", "--no-follow")
    assert (result.returncode, "no shard" in result.stderr) == (3, True)
    result = cli(emulator, world, "dlq", "redrive", "--rate", "0")
    assert result.returncode == 2


def test_tail_trim_horizon_no_follow(emulator: Emulator, world: World) -> None:
    """`tail --from trim-horizon --no-follow` prints what read_stream returns, one JSON a line."""
    put_records(emulator, world, 30)
    result = cli(emulator, world, "tail", "--from", "trim-horizon", "--no-follow")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    stored = read_stream(client(emulator, "kinesis"), world.stream_name)
    assert lines == [r["data"].decode() for r in stored]
    assert [orjson.loads(line)["event_type"] for line in lines] == ["new_process"] * 30


async def test_tail_follow_ends_on_sigterm(emulator: Emulator, world: World) -> None:
    """`tail --from trim-horizon` follows; SIGTERM ends it with exit 0."""
    docs = await asyncio.to_thread(put_records, emulator, world, 8)
    process = await asyncio.create_subprocess_exec(
        *cli_command("event-processor"),
        "tail",
        "--from",
        "trim-horizon",
        "--interval",
        "0.1",
        env=ops_env(emulator, world),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        lines: list[dict[str, Any]] = []
        while len(lines) < 8:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
            assert line, "tail ended before printing every record"
            lines.append(orjson.loads(line))
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err
    assert sorted(lines, key=lambda d: d["n"]) == docs


async def test_redrive_sigterm_stops_and_releases(emulator: Emulator, world: World) -> None:
    """SIGTERM during a paced redrive: it stops, exits 130, and leaves the rest visible."""
    count = 20
    await asyncio.to_thread(
        put_letters,
        client(emulator, "sqs"),
        world.dlq_url,
        [x for i in range(count) for x in letters_for(f"{i}x")],
    )
    process = await asyncio.create_subprocess_exec(
        *cli_command("event-processor"),
        "dlq",
        "redrive",
        "--rate",
        "2",
        "--verbose",
        env=ops_env(emulator, world),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        while not (await asyncio.wait_for(process.stdout.readline(), timeout=60)).startswith(
            b"moved "
        ):
            pass
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130, err
    assert b"interrupted" in out
    visible, hidden = await asyncio.to_thread(counts, emulator, world.dlq_url)
    moved = await asyncio.to_thread(queue_depth, emulator, world.queue_url)
    assert hidden == 0, "held messages were released"
    assert moved + visible == count
    assert 1 <= moved < count
