"""`event-processor dlq redrive` as a command: --json, --quiet, --verbose, --reason, and the
source queue named as the daemon names it."""

from __future__ import annotations

import io
import json

import pytest

from devworld.emulator import Emulator, World
from event_processor import cli, exitcodes
from event_processor.tools.dead_letters import KNOWN_REASONS
from tests.helpers import client, drain_queue
from tests.integration.support import (
    GARBAGE,
    letters_for,
    mixed_dlq,
    put_letters,
)


def run_command(world: World, *flags: str, queue: tuple[str, str] | None = None) -> tuple[int, str]:
    """`event-processor dlq redrive FLAGS` in this process, against `world` (its source queue
    by URL unless `queue` names it otherwise): (exit code, stdout)."""
    queue = ("--queue-url", world.queue_url) if queue is None else queue
    args = cli.build_parser().parse_args(
        ["dlq", "redrive", "--endpoint-url", world.endpoint_url, "--aws-region", world.region,
         "--dlq-url", world.dlq_url, *queue, *flags]
    )  # fmt: skip
    out = io.StringIO()
    code = args.handler(args, out)
    return code, out.getvalue()


def test_json_summary(emulator: Emulator, world: World) -> None:
    """--json prints one JSON object, the summary, with its documented keys; nothing else."""
    mixed_dlq(emulator, world)

    code, stdout = run_command(world, "--json", "--dry-run", "--reason", "invalid_body")
    dry = json.loads(stdout)
    code_run, stdout_run = run_command(world, "--json", "--reason", "invalid_body")
    doc = json.loads(stdout_run)

    assert (code, code_run) == (exitcodes.OK, exitcodes.OK)
    assert (dry["dry_run"], dry["moved"], dry["skipped"]) == (True, 3, 5)
    assert dry["check"]["would_be_rejected_again_by_reason"] == {"invalid_body": 3}
    assert (doc["dry_run"], doc["moved"], doc["failed"], doc["complete"]) == (False, 3, 0, True)
    assert doc["skipped_by_reason"] == {"not_an_object": 2, "invalid_field": 1, "none": 1}
    assert (doc["skipped_event_letters"], doc["skipped_events"]) == (1, 2)
    assert (doc["rejected_again"], doc["arrived_after_start"], doc["left"]) == (0, 0, 0)
    assert doc["check"] is None
    assert doc["approximate_at_start"] == 8
    assert set(doc) == set(dry)


def test_quiet_prints_the_summary_only(
    emulator: Emulator, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """--quiet: the summary on stdout, nothing on stderr; --verbose: a line per letter too."""
    put_letters(
        client(emulator, "sqs"), world.dlq_url, [x for b in GARBAGE for x in letters_for(b)]
    )

    code, quiet = run_command(world, "--quiet", "--dry-run")
    assert capsys.readouterr().err == ""
    code_verbose, verbose = run_command(world, "--verbose", "--dry-run")

    assert (code, code_verbose) == (exitcodes.OK, exitcodes.OK)
    assert quiet.startswith("dry run, nothing changed: would move 3, skipped 0, failed 0\n")
    assert "redrive " not in quiet.splitlines()[0], "no header"
    assert verbose.startswith("dry run: redrive ")
    assert verbose.count("\nwould move ") == len(GARBAGE)


def test_unknown_reason_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped --reason exits 2 and lists the known reasons, instead of moving nothing."""
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["dlq", "redrive", "--reason", "invalid_bdy"])
    err = capsys.readouterr().err
    assert exited.value.code == exitcodes.USAGE
    assert "invalid choice: 'invalid_bdy'" in err
    for reason in KNOWN_REASONS:
        assert reason in err
    assert {"none", "signature_invalid"} <= set(KNOWN_REASONS)


def test_dlq_url_help_says_it_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    """The tools' --dlq-url help says the flag is required, not what the daemon does without."""
    for command in ("redrive", "inspect"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["dlq", command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "dead-letter queue URL [env DLQ_URL; required]" in help_text
        assert "rejections are only logged" not in help_text


def test_queue_name_is_resolved_as_run_resolves_it(
    emulator: Emulator,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--queue-name: GetQueueUrl finds the queue `run` would read, and the letters go there; a
    name that does not exist exits 3 with the words `run` fails with."""
    monkeypatch.delenv("QUEUE_URL", raising=False)
    put_letters(
        client(emulator, "sqs"), world.dlq_url, [x for b in GARBAGE for x in letters_for(b)]
    )
    name = world.queue_url.rsplit("/", 1)[-1]

    code, summary = run_command(world, "--quiet", queue=("--queue-name", name))
    missing, _ = run_command(world, "--quiet", queue=("--queue-name", "no-such-queue"))

    assert code == exitcodes.OK
    assert summary.startswith(f"moved {len(GARBAGE)}, skipped 0, failed 0\n")
    assert len(drain_queue(emulator, world.queue_url)) == len(GARBAGE)
    assert missing == exitcodes.STARTUP_FAILED
    assert "source queue no-such-queue does not exist (QUEUE_NAME / --queue-name;" in (
        capsys.readouterr().err
    )
