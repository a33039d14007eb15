"""`dlq inspect` (and the peek under it) against the emulator: counts by reason and kind, the
whole DLQ paged through without consuming it, packed and version 1 letters."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections import Counter
from typing import Any

import pytest

from devworld.emulator import Emulator, World
from devworld.faultproxy import FaultProxy
from event_processor import cli, exitcodes
from event_processor.contract.letters import (
    MIXED_REASONS,
    DeadLetter,
    letter_kind,
    read_event_letter,
)
from event_processor.tools import aws, dead_letters, inspect, inspect_report, peek, tally
from tests.conftest import settings_for
from tests.factories import encode, submission
from tests.helpers import client, drain_queue, eventually, queue_depth, send_bodies
from tests.integration.support import (
    ARRAYS,
    BAD_EVENTS,
    BAD_ID,
    CONNECTIONS,
    EMPTY,
    GARBAGE,
    HUNDREDS,
    PROCESSES,
    all_visible,
    junk_dlq,
    letters_for,
    mixed_dlq,
    packed_dlq,
    put_letters,
    rejected_by_reason,
    report_table,
    v1_letters,
)


def test_letter_kind_is_decided_by_the_whole_shape() -> None:
    """Only a letter read_letter reads, with its own source message id, is an event letter."""
    [event] = letters_for(BAD_EVENTS)
    assert letter_kind(event.body, event.attributes) == "event"
    old = v1_letters(BAD_EVENTS)[0]
    assert letter_kind(old.body, old.attributes) == "event", "version 1 letters too"
    read = read_event_letter(event.body, event.attributes)
    assert read is not None
    assert [(e.sequence, e.reason, e.field) for e in read.events] == [
        (0, "invalid_field", "cmdl"),
        (2, "invalid_field", "user"),
    ]
    other = letters_for(BAD_ID)[0]
    assert letter_kind(event.body, other.attributes) == "submission", "another message's id"
    assert letter_kind(event.body, {}) == "submission", "moved by SQS: no attributes"
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    cut = event.body[: len(event.body) // 2]
    incomplete = '{"kind": "rejected_events"}'
    for body in (deep, '{"reason": "x"}', incomplete, cut, "[1]", "{not json", ""):
        assert letter_kind(body, event.attributes) == "submission"


# --------------------------------------------------------------------------------------------
# dlq inspect


def test_inspect_counts_by_reason_and_kind_without_consuming(
    emulator: Emulator, world: World
) -> None:
    """Counts per reason and kind, K examples per reason; the DLQ is left exactly as it was."""
    ids = mixed_dlq(emulator, world)
    sqs = client(emulator, "sqs")
    all_visible(emulator, world.dlq_url, 8)

    report = inspect.inspect_dlq(sqs, world.dlq_url, max_messages=100, examples=2)

    all_visible(emulator, world.dlq_url, 8)
    assert not report.sample
    assert report.read == 8
    assert dict(report.counts) == {
        ("invalid_body", "submission"): 3,
        ("not_an_object", "submission"): 2,
        ("invalid_field", "submission"): 1,
        ("invalid_field", "event"): 1,
        ("none", "submission"): 1,
    }
    assert report.events == rejected_by_reason(BAD_EVENTS) == {"invalid_field": 2}
    assert report.by_kind() == {"submission": 7, "event": 1}
    assert report.by_reason()[0] == tally.ReasonCounts("invalid_body", {"submission": 3}, 0)
    assert report.by_reason()[1] == tally.ReasonCounts(
        "invalid_field", {"submission": 1, "event": 1}, 2
    )
    assert {r: len(x) for r, x in report.examples.items()} == {
        "invalid_body": 2,
        "not_an_object": 2,
        "invalid_field": 2,
        "none": 1,
    }
    garbage = report.examples["invalid_body"][0]
    assert garbage.body in GARBAGE
    assert garbage.attributes["trace"]["StringValue"] == "trace-1"

    [letter] = [x for x in report.examples["invalid_field"] if x.kind == "event"]
    assert letter.message_id in ids["events"]

    text = inspect_report.text(report)
    assert "SAMPLE" not in text
    assert "not json" in text
    assert '"events": {"new_process"' in text, "base64 bodies are shown decoded too"
    assert "by kind: 7 submissions, 1 event letter (listing 2 rejected events of 1 submission)" in (
        text
    )
    assert "rejected events (invalid_field: 2)" in text
    assert "event 0 new_process field=cmdl: cmdl must be a string, got null" in text
    assert "event 2 new_process field=user: user is empty" in text
    doc = inspect_report.as_json(report)
    assert doc["reasons"][0] == {
        "reason": "invalid_body",
        "total": 3,
        "by_kind": {"submission": 3},
        "events": 0,
    }
    assert (doc["by_kind"], doc["events"], doc["event_submissions"]) == (
        {"submission": 7, "event": 1},
        2,
        1,
    )
    assert doc["examples"]["invalid_body"][0]["attributes"]["reason"] == "invalid_body"
    [shown] = [x for x in doc["examples"]["invalid_field"] if x["kind"] == "event"]
    assert shown["letter"]["event_count"] == 2
    assert [e["sequence"] for e in shown["letter"]["first_events"]] == [0, 2]

    remaining = {m["MessageId"] for m in drain_queue(emulator, world.dlq_url)}
    assert remaining == {i for group in ids.values() for i in group}, "nothing was consumed"


def test_inspect_says_when_counts_are_a_sample(emulator: Emulator, world: World) -> None:
    """Stopped by the limit: reported as a sample; under it, every message is read. None hidden."""
    sqs = client(emulator, "sqs")
    put_letters(sqs, world.dlq_url, [x for i in range(25) for x in letters_for(f"junk {i}")])

    small = inspect.inspect_dlq(sqs, world.dlq_url, max_messages=7, examples=100)
    assert (small.read, small.sample) == (7, True)
    assert "SAMPLE: 7 of ~25 messages (stopped at --limit 7)" in inspect_report.text(small)
    all_visible(emulator, world.dlq_url, 25)

    # moto hands out the same (oldest) messages to every VisibilityTimeout=0 receive: the peek
    # hides each page it read, so it gets past them (issue 11, item 6).
    big = inspect.inspect_dlq(sqs, world.dlq_url, max_messages=1000, examples=1000)
    seen = [letter.message_id for letter in big.examples["invalid_body"]]
    assert len(seen) == len(set(seen)) == big.read == sum(big.counts.values())
    assert big.read == 25
    assert (big.sample, big.complete) == (False, True)
    assert "SAMPLE" not in inspect_report.text(big)
    all_visible(emulator, world.dlq_url, 25)


def test_inspect_sees_the_whole_dlq(emulator: Emulator, world: World) -> None:
    """Hundreds of letters: all counted, all visible again after; --limit N stops at N, a sample."""
    ids = junk_dlq(emulator, world)
    sqs = client(emulator, "sqs")
    all_visible(emulator, world.dlq_url, HUNDREDS)

    report = inspect.inspect_dlq(sqs, world.dlq_url, examples=HUNDREDS)

    assert aws.queue_counts(sqs, world.dlq_url) == (HUNDREDS, 0), "every message released"
    assert (report.read, report.sample, report.complete) == (HUNDREDS, False, True)
    assert report.not_released == 0
    assert dict(report.counts) == {("invalid_body", "submission"): HUNDREDS}
    assert [x.message_id for x in report.examples["invalid_body"]] == ids, "oldest pages first"
    text = inspect_report.text(report)
    assert f"read {HUNDREDS} distinct messages" in text
    assert "NOTE" not in text

    limited = inspect.inspect_dlq(sqs, world.dlq_url, max_messages=95)
    assert (limited.read, limited.sample, sum(limited.counts.values())) == (95, True, 95)
    assert f"SAMPLE: 95 of ~{HUNDREDS} messages (stopped at --limit 95)" in inspect_report.text(
        limited
    )
    assert inspect_report.as_json(limited)["limit"] == 95
    all_visible(emulator, world.dlq_url, HUNDREDS)

    exact = inspect.inspect_dlq(sqs, world.dlq_url, max_messages=HUNDREDS)
    assert (exact.read, exact.sample) == (HUNDREDS, False), "a limit of the DLQ's size: whole"
    all_visible(emulator, world.dlq_url, HUNDREDS)


class ReleaseFails:
    """The emulator's SQS client, except that releasing `message_id` fails, as SQS reports it."""

    def __init__(self, sqs: Any, message_id: str) -> None:
        self._sqs = sqs
        self._message_id = message_id
        self._handles: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def receive_message(self, **kwargs: Any) -> Any:
        response = self._sqs.receive_message(**kwargs)
        for message in response.get("Messages", []):
            if message["MessageId"] == self._message_id:
                self._handles.add(message["ReceiptHandle"])
        return response

    def change_message_visibility_batch(self, *, QueueUrl: str, Entries: list[Any]) -> Any:
        passing = [e for e in Entries if e["ReceiptHandle"] not in self._handles]
        failed = [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "test"}
            for e in Entries
            if e["ReceiptHandle"] in self._handles
        ]
        response = self._sqs.change_message_visibility_batch(QueueUrl=QueueUrl, Entries=passing)
        response["Failed"] = response.get("Failed", []) + failed
        return response


def test_peek_releases_when_the_scan_ends_early(emulator: Emulator, world: World) -> None:
    """A break mid-page, an exception or a stop request: every message read is visible again."""
    sqs = client(emulator, "sqs")
    put_letters(sqs, world.dlq_url, [x for i in range(25) for x in letters_for(f"junk {i}")])

    with peek.peek(sqs, world.dlq_url) as scan:
        for n, _ in enumerate(scan, 1):
            if n == 15:
                break
        assert len(scan.held) == 20, "the rest of the second page is held too"
        assert aws.queue_counts(sqs, world.dlq_url) == (5, 20)
    assert (scan.complete, scan.not_released) == (False, 0)
    all_visible(emulator, world.dlq_url, 25)

    def fail_mid_scan() -> None:
        with peek.peek(sqs, world.dlq_url) as scan:
            next(iter(scan))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_mid_scan()
    all_visible(emulator, world.dlq_url, 25)

    class StopAfterOneReceive:
        """Sets the stop event once the first page was received (a Ctrl-C mid-scan)."""

        stop = threading.Event()

        def __getattr__(self, name: str) -> Any:
            return getattr(sqs, name)

        def receive_message(self, **kwargs: Any) -> Any:
            self.stop.set()
            return sqs.receive_message(**kwargs)

    stopping = StopAfterOneReceive()
    report = inspect.inspect_dlq(stopping, world.dlq_url, stop=stopping.stop)
    assert (report.read, report.interrupted, report.sample) == (10, True, False)
    assert "NOTE: interrupted: the counts below cover only the 10 messages read" in (
        inspect_report.text(report)
    )
    all_visible(emulator, world.dlq_url, 25)


def test_peek_reports_a_failed_release(emulator: Emulator, world: World) -> None:
    """A Failed entry of ChangeMessageVisibilityBatch is warned about and counted, not hidden."""
    ids = junk_dlq(emulator, world, 12)
    err = io.StringIO()

    report = inspect.inspect_dlq(
        ReleaseFails(client(emulator, "sqs"), ids[3]), world.dlq_url, err=err
    )

    assert (report.read, report.not_released) == (12, 1)
    assert f"could not release {ids[3]} (InternalError: test)" in err.getvalue()
    assert "WARNING: 1 message could not be released" in inspect_report.text(report)
    assert aws.queue_counts(client(emulator, "sqs"), world.dlq_url) == (11, 1)


def test_peek_without_a_hold_stops_when_nothing_is_new(emulator: Emulator, world: World) -> None:
    """No hold (the old VisibilityTimeout=0): the same page comes back, so the scan gives up."""
    sqs = client(emulator, "sqs")
    junk_dlq(emulator, world, 25)

    with peek.peek(sqs, world.dlq_url, hold_s=0) as scan:
        read = [letter.message_id for letter in scan]
        assert len(scan.held) == 10, "a message received again keeps one (its newest) handle"

    assert len(read) == len(set(read)) == 10
    assert not scan.complete, "not the whole DLQ: reported as such"
    all_visible(emulator, world.dlq_url, 25)


def test_inspect_of_an_empty_dlq(emulator: Emulator, world: World) -> None:
    """An empty DLQ is reported as such."""
    report = inspect.inspect_dlq(client(emulator, "sqs"), world.dlq_url)
    assert (report.read, report.sample) == (0, False)
    assert "looks empty" in inspect_report.text(report)


def test_inspect_counts_every_event_of_packed_letters(emulator: Emulator, world: World) -> None:
    """Hundreds of events in a few packed letters: exact counts by each event's own reason."""
    bodies, letters = packed_dlq(emulator, world)
    sqs = client(emulator, "sqs")
    put_letters(sqs, world.dlq_url, [x for b in GARBAGE for x in letters_for(b)])
    expected = rejected_by_reason(*bodies)
    assert expected == {
        "invalid_field": PROCESSES // 3,
        "missing_field": PROCESSES // 3 + EMPTY,
        "event_not_an_object": CONNECTIONS,
    }
    by_attribute = Counter(
        (letter.attributes["reason"]["StringValue"], letter.kind) for letter in letters
    )
    assert by_attribute[MIXED_REASONS, "event"] >= 2
    assert by_attribute["missing_field", "event"] >= 1, "the single-reason submission's letter"

    report = inspect.inspect_dlq(sqs, world.dlq_url, examples=1)

    assert report.read == len(letters) + len(GARBAGE)
    assert not report.sample
    assert report.events == expected
    assert dict(report.counts) == {**by_attribute, ("invalid_body", "submission"): len(GARBAGE)}
    assert report.by_kind() == {"submission": len(GARBAGE), "event": len(letters)}
    assert len(report.event_submissions) == len(bodies)
    rows = {row.reason: row for row in report.by_reason()}
    assert rows[MIXED_REASONS].events == 0, "events count under their own reasons"
    assert [row.reason for row in report.by_reason()][:3] == [
        "missing_field",
        "event_not_an_object",
        "invalid_field",
    ], "the most rejections first"
    all_visible(emulator, world.dlq_url, len(letters) + len(GARBAGE))

    text = inspect_report.text(report)
    total = sum(expected.values())
    assert (
        f"by kind: {len(GARBAGE)} submissions, {len(letters)} event letters (listing"
        f" {total} rejected events of {len(bodies)} submissions)"
    ) in text
    shown_once = [line for line in text.splitlines() if line.startswith("      letter: ")]
    examples = {x.message_id for xs in report.examples.values() for x in xs if x.events}
    assert len(shown_once) == len(examples) >= 2, "each letter in full once, under any reasons"
    table = report_table(text)
    for reason, count in expected.items():
        listing = by_attribute[reason, "event"]  # letters whose events all have this reason
        assert table[reason] == ["0", str(listing), str(listing), str(count)]
    assert table["invalid_body"] == [str(len(GARBAGE)), "0", str(len(GARBAGE)), "0"]
    assert f"... and {CONNECTIONS - dead_letters.EXAMPLE_EVENTS} more event_not_an_object" in text
    doc = inspect_report.as_json(report)
    assert {r["reason"]: r["events"] for r in doc["reasons"]} == {
        **expected,
        MIXED_REASONS: 0,
        "invalid_body": 0,
    }
    assert doc["events"] == total
    [example] = doc["examples"]["event_not_an_object"]
    assert [e["event_preview"] for e in example["letter"]["first_events"]] == ['"x"', '"x"']
    assert sum(example["letter"]["events_by_reason"].values()) == example["letter"]["event_count"]


def test_inspect_counts_a_version_1_letter_as_one_event(emulator: Emulator, world: World) -> None:
    """Letters written before packing (one event each, also truncated ones) count one event."""
    old = v1_letters(BAD_EVENTS)
    truncated = json.loads(old[1].body)
    preview = json.dumps(truncated.pop("event"))[:10]
    truncated.update(event_truncated=True, event_preview=preview)
    old[1] = DeadLetter(old[1].kind, json.dumps(truncated), old[1].attributes)
    sqs = client(emulator, "sqs")
    put_letters(sqs, world.dlq_url, [*old, *letters_for(BAD_EVENTS)])

    report = inspect.inspect_dlq(sqs, world.dlq_url, examples=3)

    assert dict(report.counts) == {("invalid_field", "event"): len(old) + 1}
    assert report.events == {"invalid_field": len(old) + rejected_by_reason(BAD_EVENTS).total()}
    assert [x.events.count for x in report.examples["invalid_field"] if x.events] == [1, 1, 2]
    text = inspect_report.text(report)
    assert "part 1 of 1 of submission" in text
    assert f"{preview} (truncated)" in text
    all_visible(emulator, world.dlq_url, len(old) + 1)


async def test_inspect_reads_what_the_daemon_dead_lettered(
    emulator: Emulator, world: World, daemon: Any
) -> None:
    """The daemon's real dead letters are classified by reason and kind, events counted."""
    bodies = [*GARBAGE[:2], ARRAYS[0], BAD_EVENTS, encode(submission())]
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, bodies)
    running = await daemon(settings_for(world))
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    assert await running.stop() == 0

    report = await asyncio.to_thread(inspect.inspect_dlq, client(emulator, "sqs"), world.dlq_url)
    assert dict(report.counts) == {
        ("invalid_body", "submission"): 2,
        ("not_an_object", "submission"): 1,
        ("invalid_field", "event"): 1,
    }
    assert report.events == rejected_by_reason(BAD_EVENTS)
    await asyncio.to_thread(all_visible, emulator, world.dlq_url, 4)


def test_inspect_command_exits_1_when_the_receive_fails(
    emulator: Emulator, world: World, proxy: FaultProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dlq inspect` whose ReceiveMessage keeps failing: exit 1, one line on stderr, no report,
    and the DLQ as it was."""
    put_letters(client(emulator, "sqs"), world.dlq_url, letters_for(GARBAGE[0]))
    proxy.configure(fail_operations=frozenset({"ReceiveMessage"}))
    args = cli.build_parser().parse_args(
        ["dlq", "inspect", "--endpoint-url", proxy.endpoint_url, "--aws-region", world.region,
         "--dlq-url", world.dlq_url]
    )  # fmt: skip
    out = io.StringIO()

    code = args.handler(args, out)

    assert code == exitcodes.FAILED
    assert (out.getvalue(), proxy.calls("ReceiveMessage")) == ("", 3)
    assert capsys.readouterr().err.startswith("inspect failed: ")
    all_visible(emulator, world.dlq_url, 1)
