"""Operator tools (event_processor.tools) against the emulator: dlq inspect, dlq redrive, tail."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from devworld.emulator import Emulator, World, read_stream
from event_processor import constants
from event_processor.letters import (
    KIND_EVENTS,
    MIXED_REASONS,
    DeadLetter,
    LetterPacker,
    letter_kind,
    read_event_letter,
    read_letter,
    submission_letter,
)
from event_processor.models import (
    PartitionKey,
    Rejection,
    format_timestamp,
    parse_packed,
    parse_submission,
)
from event_processor.source import Message
from event_processor.tools import aws, dead_letters, inspect, peek
from event_processor.tools.tail import tail
from tests.conftest import settings_for
from tests.factories import encode, new_process, received_message, submission
from tests.helpers import client, drain_queue, eventually, queue_depth, send_bodies

TRACE = {"trace": {"DataType": "String", "StringValue": "trace-1"}}


def message_for(body: str, attributes: dict[str, Any] | None = None) -> Message:
    """`body` as the daemon receives it from the source queue."""
    return received_message(body, attributes=attributes)


def letters_for(
    body: str,
    attributes: dict[str, Any] | None = None,
    max_message_bytes: int = constants.SQS_MAX_MESSAGE_BYTES,
) -> list[DeadLetter]:
    """The dead letters the daemon writes for `body`, built by the daemon's own code."""
    message = message_for(body, attributes)
    packer = LetterPacker(message, max_message_bytes)
    processed_at = format_timestamp(datetime.now(UTC))
    parsed = parse_packed(body, processed_at, PartitionKey.DEVICE_ID, packer.add)
    if isinstance(parsed, Rejection):
        return [submission_letter(message, body, parsed)]
    return packer.letters(parsed.submission_id, parsed.device_id)


def v1_letters(body: str) -> list[DeadLetter]:
    """The one-letter-per-event dead letters the daemon wrote before packing (version 1)."""
    message = message_for(body)
    parsed = parse_submission(body)
    assert not isinstance(parsed, Rejection)
    letters = []
    for rejected in parsed.rejected:
        document = {
            "reason": rejected.rejection.reason.value,
            "field": rejected.rejection.field,
            "detail": rejected.rejection.detail,
            "submission_id": parsed.submission_id,
            "device_id": parsed.device_id,
            "sequence": rejected.sequence,
            "event_type": rejected.event_type,
            "source_message_id": message.message_id,
            "event": rejected.event,
        }
        attributes: dict[str, Any] = {
            "reason": {"DataType": "String", "StringValue": rejected.rejection.reason.value},
            "detail": {"DataType": "String", "StringValue": rejected.rejection.detail},
            "source_message_id": {"DataType": "String", "StringValue": message.message_id},
            "receive_count": {"DataType": "Number", "StringValue": "1"},
        }
        letters.append(DeadLetter(KIND_EVENTS, json.dumps(document), attributes))
    return letters


def rejected_by_reason(*bodies: str) -> Counter[str]:
    """The rejected events of valid submissions by reason, as the validator finds them."""
    counts: Counter[str] = Counter()
    for body in bodies:
        parsed = parse_submission(body)
        assert not isinstance(parsed, Rejection)
        counts.update(rejected.rejection.reason.value for rejected in parsed.rejected)
    return counts


def dlq_max_bytes(emulator: Emulator, dlq_url: str) -> int:
    """The DLQ's MaximumMessageSize: what the daemon packs letters to."""
    attributes = client(emulator, "sqs").get_queue_attributes(
        QueueUrl=dlq_url, AttributeNames=["MaximumMessageSize"]
    )["Attributes"]
    return int(attributes["MaximumMessageSize"])


def put_letters(sqs: Any, dlq_url: str, letters: list[DeadLetter]) -> list[str]:
    """Send dead letters to the DLQ as the daemon does; return their message ids in order."""
    ids: list[str] = []
    chunks: list[list[DeadLetter]] = []
    for letter in letters:  # batches within SQS's limits, as the daemon's Batcher makes them
        if (
            not chunks
            or len(chunks[-1]) == constants.SQS_MAX_BATCH_ENTRIES
            or sum(x.size for x in chunks[-1]) + letter.size > constants.SQS_MAX_BATCH_BYTES
        ):
            chunks.append([])
        chunks[-1].append(letter)
    for chunk in chunks:
        response = sqs.send_message_batch(
            QueueUrl=dlq_url,
            Entries=[
                {"Id": str(i), "MessageBody": letter.body, "MessageAttributes": letter.attributes}
                for i, letter in enumerate(chunk)
            ],
        )
        assert not response.get("Failed"), response
        ids += [e["MessageId"] for e in sorted(response["Successful"], key=lambda e: int(e["Id"]))]
    return ids


GARBAGE = ["not json 1", "not json 2", "not json 3"]
ARRAYS = [encode([1, 2, 3]), encode([4])]
BAD_ID = encode(submission(submission_id="not-an-uuid"))
BAD_EVENTS = encode(
    submission({"new_process": [new_process(cmdl=None), new_process(), new_process(user=" ")]})
)
POISON = encode(submission())
# Packed letters: hundreds of rejected events. Each padded event takes about 1/PADDED_PER_LETTER
# of a letter, so the first submission's events take several letters (parts) of any DLQ size.
PADDED_PER_LETTER = 100
PROCESSES = 300  # a third rejected as invalid_field, a third as missing_field, a third valid
CONNECTIONS = 150  # all rejected as event_not_an_object
EMPTY = 120  # all rejected as missing_field


def packed_bodies(max_message_bytes: int) -> list[str]:
    """Two valid submissions with hundreds of rejected events: one of mixed reasons, one not."""
    pad = "x" * (max_message_bytes // PADDED_PER_LETTER)
    processes = [
        [new_process(pad, " "), {"cmdl": pad}, new_process(pad)][i % 3] for i in range(PROCESSES)
    ]
    mixed = submission({"new_process": processes, "network_connection": ["x"] * CONNECTIONS})
    single = submission({"new_process": [{}] * EMPTY})
    return [encode(mixed), encode(single)]


def mixed_dlq(emulator: Emulator, world: World) -> dict[str, list[str]]:
    """8 dead letters of every shape (one packed letter of 2 events): {label: [message ids]}."""
    sqs = client(emulator, "sqs")
    ids = {
        "invalid_body": put_letters(
            sqs, world.dlq_url, [x for b in GARBAGE for x in letters_for(b, TRACE)]
        ),
        "not_an_object": put_letters(
            sqs, world.dlq_url, [x for b in ARRAYS for x in letters_for(b)]
        ),
        "invalid_field": put_letters(sqs, world.dlq_url, letters_for(BAD_ID)),
        "events": put_letters(sqs, world.dlq_url, letters_for(BAD_EVENTS)),
    }
    # Moved by SQS's redrive policy after maxReceiveCount: the original, no reason attached.
    response = sqs.send_message(QueueUrl=world.dlq_url, MessageBody=POISON)
    ids["none"] = [response["MessageId"]]
    return ids


def all_visible(emulator: Emulator, queue_url: str, expected: int) -> None:
    """The queue holds `expected` messages and every one is visible."""
    assert aws.queue_counts(client(emulator, "sqs"), queue_url) == (expected, 0)


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
    assert report.by_reason()[0] == inspect.ReasonCounts("invalid_body", {"submission": 3}, 0)
    assert report.by_reason()[1] == inspect.ReasonCounts(
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

    text = inspect.format_report(report)
    assert "SAMPLE" not in text
    assert "not json" in text
    assert '"events": {"new_process"' in text, "base64 bodies are shown decoded too"
    assert "by kind: 7 submissions, 1 event letter (listing 2 rejected events of 1 submission)" in (
        text
    )
    assert "rejected events (invalid_field: 2)" in text
    assert "event 0 new_process field=cmdl: cmdl must be a string, got null" in text
    assert "event 2 new_process field=user: user is empty" in text
    doc = inspect.report_json(report)
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
    assert "SAMPLE: 7 of ~25 messages (stopped at --limit 7)" in inspect.format_report(small)
    all_visible(emulator, world.dlq_url, 25)

    # moto hands out the same (oldest) messages to every VisibilityTimeout=0 receive: the peek
    # hides each page it read, so it gets past them (issue 11, item 6).
    big = inspect.inspect_dlq(sqs, world.dlq_url, max_messages=1000, examples=1000)
    seen = [letter.message_id for letter in big.examples["invalid_body"]]
    assert len(seen) == len(set(seen)) == big.read == sum(big.counts.values())
    assert big.read == 25
    assert (big.sample, big.complete) == (False, True)
    assert "SAMPLE" not in inspect.format_report(big)
    all_visible(emulator, world.dlq_url, 25)


HUNDREDS = 250  # letters in the DLQ of the whole-DLQ tests: 25 pages of 10


def junk_dlq(emulator: Emulator, world: World, count: int = HUNDREDS) -> list[str]:
    """`count` rejected submissions (invalid_body) in the DLQ; their message ids."""
    letters = [x for i in range(count) for x in letters_for(f"junk {i}")]
    return put_letters(client(emulator, "sqs"), world.dlq_url, letters)


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
    text = inspect.format_report(report)
    assert f"read {HUNDREDS} distinct messages" in text
    assert "NOTE" not in text

    limited = inspect.inspect_dlq(sqs, world.dlq_url, max_messages=95)
    assert (limited.read, limited.sample, sum(limited.counts.values())) == (95, True, 95)
    assert f"SAMPLE: 95 of ~{HUNDREDS} messages (stopped at --limit 95)" in inspect.format_report(
        limited
    )
    assert inspect.report_json(limited)["limit"] == 95
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
        inspect.format_report(report)
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
    assert "WARNING: 1 message could not be released" in inspect.format_report(report)
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
    assert "looks empty" in inspect.format_report(report)


def packed_dlq(emulator: Emulator, world: World) -> tuple[list[str], list[DeadLetter]]:
    """The letters of packed_bodies() in the DLQ, packed to its size: (bodies, letters)."""
    max_bytes = dlq_max_bytes(emulator, world.dlq_url)
    bodies = packed_bodies(max_bytes)
    letters = [x for b in bodies for x in letters_for(b, max_message_bytes=max_bytes)]
    parts = [read_letter(letter.body) for letter in letters]
    assert [(p.part, p.parts) for p in parts if p is not None][-1] == (1, 1), "the single one"
    assert letters[0].size <= max_bytes
    assert len(letters) > 2, "the mixed submission takes several letters"
    put_letters(client(emulator, "sqs"), world.dlq_url, letters)
    return bodies, letters


def report_table(text: str) -> dict[str, list[str]]:
    """The rows of format_report's table: reason -> [submission, event, total, events]."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["reason"]) + 1
    rows: dict[str, list[str]] = {}
    for line in lines[start:]:
        if not line.strip() or line.strip().startswith("("):
            break
        reason, *columns = line.split()
        rows[reason] = columns
    return rows


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

    text = inspect.format_report(report)
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
    doc = inspect.report_json(report)
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
    text = inspect.format_report(report)
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


# --------------------------------------------------------------------------------------------
# tail


def put_records(
    emulator: Emulator, world: World, count: int, tag: str = "-"
) -> list[dict[str, Any]]:
    """`count` JSON records over several partition keys (so both shards get some)."""
    docs = [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "new_process",
            "n": i,
            "tag": tag,
            "x": "a\nb",
        }
        for i in range(count)
    ]
    response = client(emulator, "kinesis").put_records(
        StreamName=world.stream_name,
        Records=[
            {"Data": orjson.dumps(d), "PartitionKey": f"device-{i % 7}"} for i, d in enumerate(docs)
        ],
    )
    assert response["FailedRecordCount"] == 0
    return docs


def stored_lines(emulator: Emulator, world: World) -> list[str]:
    return [r["data"].decode() for r in read_stream(client(emulator, "kinesis"), world.stream_name)]


def test_tail_prints_the_stream_as_json_lines(emulator: Emulator, world: World) -> None:
    """--from trim-horizon --no-follow: every record, as stored, one per line, then it returns."""
    put_records(emulator, world, 20)
    out = io.StringIO()

    printed = tail(
        client(emulator, "kinesis"), world.stream_name, start="trim-horizon", follow=False, out=out
    )

    lines = out.getvalue().splitlines()
    assert printed == len(lines) == 20
    assert lines == stored_lines(emulator, world)
    assert all(isinstance(orjson.loads(line), dict) for line in lines)


def test_tail_one_shard_and_a_limit(emulator: Emulator, world: World) -> None:
    """--shard reads only that shard; --limit stops after N records."""
    put_records(emulator, world, 20)
    stored = read_stream(client(emulator, "kinesis"), world.stream_name)
    shard = stored[-1]["shard_id"]
    expected = [r["data"].decode() for r in stored if r["shard_id"] == shard]
    kinesis = client(emulator, "kinesis")

    out = io.StringIO()
    tail(kinesis, world.stream_name, start="trim-horizon", shards=[shard], follow=False, out=out)
    assert out.getvalue().splitlines() == expected

    out = io.StringIO()
    tail(kinesis, world.stream_name, start="trim-horizon", follow=False, limit=3, out=out)
    assert out.getvalue().splitlines() == stored_lines(emulator, world)[:3]

    with pytest.raises(aws.ToolError, match="no shard shardId-000000000099"):
        tail(kinesis, world.stream_name, shards=["shardId-000000000099"], follow=False)


def test_tail_skips_records_that_are_not_json(emulator: Emulator, world: World) -> None:
    """A record another producer wrote that is not JSON is skipped with a warning."""
    kinesis = client(emulator, "kinesis")
    kinesis.put_record(StreamName=world.stream_name, Data=b"plain text", PartitionKey="k")
    kinesis.put_record(StreamName=world.stream_name, Data=b'{"ok": 1}', PartitionKey="k")
    out, err = io.StringIO(), io.StringIO()
    tail(kinesis, world.stream_name, start="trim-horizon", follow=False, out=out, err=err)
    assert out.getvalue() == '{"ok": 1}\n'
    assert "is not JSON; skipped" in err.getvalue()


class Spy:
    """A Kinesis client that tells when the first GetRecords was made."""

    def __init__(self, kinesis: Any) -> None:
        self._kinesis = kinesis
        self.polled = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kinesis, name)

    def get_records(self, **kwargs: Any) -> Any:
        self.polled.set()
        return self._kinesis.get_records(**kwargs)


async def test_tail_follows_new_records_until_stopped(emulator: Emulator, world: World) -> None:
    """--from latest with follow: records put after it started are printed; stop ends it."""
    await asyncio.to_thread(put_records, emulator, world, 5, "before")
    kinesis = Spy(client(emulator, "kinesis"))
    out = io.StringIO()
    stop = threading.Event()
    task = asyncio.create_task(
        asyncio.to_thread(tail, kinesis, world.stream_name, out=out, stop=stop, interval_s=0.05)
    )

    async def printed_all() -> bool:
        return len(out.getvalue().splitlines()) >= 12

    try:
        await asyncio.wait_for(asyncio.to_thread(kinesis.polled.wait, 30), timeout=30)
        await asyncio.to_thread(put_records, emulator, world, 12, "after")
        await eventually(printed_all)
    finally:
        stop.set()
        printed = await asyncio.wait_for(task, timeout=10)
    lines = out.getvalue().splitlines()
    assert printed == len(lines) == 12
    after = [line for line in stored_lines(emulator, world) if orjson.loads(line)["tag"] == "after"]
    assert sorted(lines) == sorted(after), "exactly the new records, as stored"


async def test_tail_follow_stops_at_the_limit(emulator: Emulator, world: World) -> None:
    """With follow and --limit N it returns by itself after N records."""
    kinesis = client(emulator, "kinesis")
    await asyncio.to_thread(put_records, emulator, world, 4)
    out = io.StringIO()
    printed = await asyncio.wait_for(
        asyncio.to_thread(tail, kinesis, world.stream_name, start="trim-horizon", limit=3, out=out),
        timeout=30,
    )
    assert printed == 3
    assert len(out.getvalue().splitlines()) == 3
