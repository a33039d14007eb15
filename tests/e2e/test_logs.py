"""The daemon's logs as an operator reads them (JSON, parsed): rejections summarised, the
periodic status, totals in the stopped line, the start line's settings, a forced stop."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from devworld.emulator import DUMMY_SECRET_ACCESS_KEY, Emulator, World
from devworld.faultproxy import FaultProxy
from event_processor import __version__, exitcodes
from event_processor.contract.letters import string_attribute
from tests.factories import encode, new_process, submission
from tests.helpers import (
    Cli,
    daemon_env,
    drain_queue,
    queue_counts,
    send_bodies,
    stream_records,
    wait_for,
)

pytestmark = pytest.mark.e2e

# Rejections whole (two kinds), and a valid submission with two rejected events.
NOT_JSON = "this is not json"
NOT_AN_OBJECT = "[1, 2, 3]"
TIMEOUT_S = 30.0


def summed(lines: list[dict[str, Any]], field: str) -> dict[str, int]:
    """The counts by reason of every `rejections` line, added up."""
    total: dict[str, int] = {}
    for line in lines:
        for reason, count in line[field].items():
            total[reason] = total.get(reason, 0) + count
    return total


def test_rejections_status_and_totals_are_in_the_json_logs(
    emulator: Emulator, world: World, spawn_cli: Callable[..., Cli]
) -> None:
    """Rejections are summarised at INFO by reason with their message ids, a status line
    comes every interval, and the stopped line carries the totals since the start."""
    env = daemon_env(emulator, world, LOG_FORMAT="json", LOG_INTERVAL_SECONDS="1")
    daemon = spawn_cli("daemon", "run", env=env)
    daemon.wait_running()
    [running] = daemon.actions("running")
    assert running["version"] == __version__
    assert running["settings"]["queue_url"] == world.queue_url
    assert running["settings"]["log_interval_seconds"] == 1.0
    assert running["queue_url"] == world.queue_url

    valid = [encode(submission()) for _ in range(3)]
    mixed = encode(submission({"new_process": [new_process(), 7, "x"]}))
    send_bodies(emulator, world.queue_url, [*valid, NOT_JSON, NOT_JSON, NOT_AN_OBJECT, mixed])

    def counted() -> bool:
        assert daemon.process.poll() is None, daemon.log_path.read_text()
        lines = daemon.actions("rejections")
        return summed(lines, "submissions") == {"invalid_body": 2, "not_an_object": 1} and (
            summed(lines, "events") == {"event_not_an_object": 2}
        )

    wait_for(counted, TIMEOUT_S, "rejections summarised in the log")

    def status_caught_up() -> bool:
        return any(line["published"] == 4 for line in daemon.actions("status"))

    wait_for(status_caught_up, TIMEOUT_S, "a status line counting the published submissions")
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=TIMEOUT_S) == exitcodes.OK, daemon.log_path.read_text()

    # The example ids are the dead letters' source message ids, under their reasons.
    letters: dict[str, set[str]] = {}
    for letter in drain_queue(emulator, world.dlq_url):
        attributes = letter["MessageAttributes"]
        reason = string_attribute(attributes, "reason")
        source_id = string_attribute(attributes, "source_message_id")
        assert reason is not None
        assert source_id is not None
        letters.setdefault(reason, set()).add(source_id)
    examples: dict[str, set[str]] = {}
    for line in daemon.actions("rejections"):
        for reason, ids in line["example_message_ids"].items():
            examples.setdefault(reason, set()).update(ids)
    assert examples == letters
    assert len(examples["invalid_body"]) == 2

    status = next(line for line in daemon.actions("status") if line["published"] == 4)
    assert (status["received"], status["rejected"], status["events_rejected"]) == (7, 3, 2)
    assert status["in_flight"] == 0
    [stopped] = daemon.actions("stopped")
    assert stopped["exit_code"] == exitcodes.OK
    assert stopped["forced"] is False
    assert (stopped["unfinished"], stopped["released"]) == (0, 0)
    assert (stopped["received"], stopped["published"], stopped["rejected"]) == (7, 4, 3)
    assert stopped["rejected_by_reason"] == {"invalid_body": 2, "not_an_object": 1}
    assert stopped["events_rejected_by_reason"] == {"event_not_an_object": 2}
    assert stopped["events_published"] == 3 * 3 + 1
    assert stopped["dlq_sent"] == 4  # three whole submissions, one letter of events
    assert DUMMY_SECRET_ACCESS_KEY not in daemon.log_path.read_text()


def test_a_second_sigterm_exits_130_and_says_what_it_left(
    emulator: Emulator, world: World, proxy: FaultProxy, cli: Callable[..., Cli]
) -> None:
    """Work held in flight (Kinesis refuses every record): the first SIGTERM drains, the
    second cuts it short; exit 130, the stopped line says forced and what it released."""
    daemon = cli("daemon", "--shutdown-grace-seconds", "120")
    daemon.wait_running()
    proxy.configure(put_records_entry_failure_rate=1.0)
    bodies = [encode(submission()) for _ in range(5)]
    send_bodies(emulator, world.queue_url, bodies)

    def all_held() -> bool:
        assert daemon.process.poll() is None, daemon.log_path.read_text()
        return queue_counts(emulator, world.queue_url) == (0, len(bodies))

    wait_for(all_held, TIMEOUT_S, "every submission received and held in flight")
    # Receives fail without reaching SQS from here, and the signals wait until none is on its
    # way back: a long poll the daemon gave up on still runs in the emulator, and would take
    # the released messages and hide them (as test_cli_faults' SIGTERM test does).
    proxy.configure(fail_operations=frozenset({"ReceiveMessage"}))
    wait_for(lambda: proxy.pending("ReceiveMessage") == 0, TIMEOUT_S, "receives answered")
    daemon.process.send_signal(signal.SIGTERM)
    wait_for(lambda: bool(daemon.actions("draining")), TIMEOUT_S, "the drain under way")
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=TIMEOUT_S) == exitcodes.INTERRUPTED, (
        daemon.log_path.read_text()
    )

    [stopped] = daemon.actions("stopped")
    assert stopped["exit_code"] == exitcodes.INTERRUPTED
    assert stopped["forced"] is True
    assert stopped["grace_expired"] is False
    assert stopped["unfinished"] == stopped["released"] == len(bodies)
    assert (stopped["received"], stopped["published"]) == (len(bodies), 0)
    proxy.clear()
    # Released with visibility 0: visible again at once, nothing of them in the stream.
    assert queue_counts(emulator, world.queue_url) == (len(bodies), 0)
    assert stream_records(emulator, world) == []
