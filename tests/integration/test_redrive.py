"""`dlq redrive` against the emulator: what moves and how, each letter at most once, only what
was in the DLQ at the start, what the daemon dead-letters again meanwhile, and the dry run's
check of each letter against the current contract and signatures."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Collection
from typing import Any

import pytest

from devworld.emulator import Emulator, World, read_stream
from devworld.faultproxy import FaultProxy
from event_processor import cli, exitcodes
from event_processor.auth.keyset import KeySet
from event_processor.config import Settings
from event_processor.contract.letters import submission_letter
from event_processor.contract.rules import Reason, Rejection
from event_processor.contract.signing import SIGNATURE_ATTRIBUTE, signature_attributes
from event_processor.pipeline.submission import source_message
from event_processor.tools import aws, inspect, peek, recheck, redrive
from event_processor.tools.dead_letters import KNOWN_REASONS
from event_processor.tools.text import counts
from tests.conftest import settings_for
from tests.factories import encode, received_message, submission
from tests.helpers import client, drain_queue, eventually, queue_depth
from tests.integration.support import (
    ARRAYS,
    BAD_EVENTS,
    BAD_ID,
    GARBAGE,
    HUNDREDS,
    POISON,
    all_visible,
    junk_dlq,
    letters_for,
    message_for,
    mixed_dlq,
    packed_dlq,
    put_letters,
    rejected_by_reason,
    v1_letters,
)
from tests.integration.test_auth import DEVICE_A, DEVICE_B, K1, K2, key_set_text


def test_dry_run_sees_the_whole_dlq(emulator: Emulator, world: World) -> None:
    """A dry-run redrive lists every one of hundreds of letters; --max N says it is a sample."""
    ids = junk_dlq(emulator, world)
    sqs = client(emulator, "sqs")
    out = io.StringIO()

    summary = redrive.redrive(
        sqs, world.dlq_url, world.queue_url, dry_run=True, verbose=True, out=out
    )

    assert (summary.moved, summary.skipped, summary.failed) == (HUNDREDS, 0, 0)
    assert summary.read == HUNDREDS
    assert [line.split()[2] for line in out.getvalue().splitlines()] == ids
    assert "NOTE" not in summary.text()
    all_visible(emulator, world.dlq_url, HUNDREDS)
    assert queue_depth(emulator, world.queue_url) == 0

    limited = redrive.redrive(
        sqs, world.dlq_url, world.queue_url, dry_run=True, max_messages=30, out=io.StringIO()
    )
    assert (limited.moved, limited.limited) == (30, True)
    assert f"a SAMPLE: the dry run stopped at --max 30 after reading 30 of ~{HUNDREDS}" in (
        limited.text()
    )
    all_visible(emulator, world.dlq_url, HUNDREDS)


# --------------------------------------------------------------------------------------------
# dlq redrive


def test_redrive_moves_only_the_chosen_reason(emulator: Emulator, world: World) -> None:
    """Only invalid_body moves, with our attributes stripped; the rest stays, visible at once."""
    ids = mixed_dlq(emulator, world)
    out, err = io.StringIO(), io.StringIO()

    summary = redrive.redrive(
        client(emulator, "sqs"),
        world.dlq_url,
        world.queue_url,
        reason="invalid_body",
        verbose=True,
        out=out,
        err=err,
    )

    assert (summary.moved, summary.skipped, summary.failed) == (3, 5, 0)
    assert (summary.skipped_events, summary.skipped_event_count) == (1, 2)
    assert dict(summary.skipped_other) == {"not_an_object": 2, "invalid_field": 1, "none": 1}
    assert not summary.aborted
    assert err.getvalue() == ""
    assert out.getvalue().count("moved ") == 3
    all_visible(emulator, world.dlq_url, 5)

    moved = drain_queue(emulator, world.queue_url)
    assert sorted(m["Body"] for m in moved) == GARBAGE
    for message in moved:
        assert set(message["MessageAttributes"]) == {"trace"}, "ours stripped, the original kept"
        assert message["MessageAttributes"]["trace"]["StringValue"] == "trace-1"
    left = {m["MessageId"] for m in drain_queue(emulator, world.dlq_url)}
    assert left == {i for k, group in ids.items() if k != "invalid_body" for i in group}


def test_redrive_never_moves_rejected_event_letters(emulator: Emulator, world: World) -> None:
    """Without --reason every submission moves (also SQS-redriven ones); event letters stay."""
    ids = mixed_dlq(emulator, world)

    summary = redrive.redrive(
        client(emulator, "sqs"), world.dlq_url, world.queue_url, out=io.StringIO()
    )

    assert (summary.moved, summary.skipped_events, summary.failed) == (7, 1, 0)
    assert "1 event letter listing 2 rejected events (not submissions)" in summary.text()
    all_visible(emulator, world.dlq_url, 1)
    assert {m["MessageId"] for m in drain_queue(emulator, world.dlq_url)} == set(ids["events"])
    bodies = sorted(m["Body"] for m in drain_queue(emulator, world.queue_url))
    assert bodies == sorted([*GARBAGE, *ARRAYS, BAD_ID, POISON])


def test_redrive_skips_packed_letters_and_reports_them(emulator: Emulator, world: World) -> None:
    """Packed and version 1 event letters stay; the summary counts the letters and events."""
    bodies, letters = packed_dlq(emulator, world)
    sqs = client(emulator, "sqs")
    old = v1_letters(BAD_EVENTS)
    kept = set(put_letters(sqs, world.dlq_url, old))
    put_letters(sqs, world.dlq_url, [x for b in GARBAGE for x in letters_for(b)])
    events = rejected_by_reason(*bodies, BAD_EVENTS).total()
    skipped = f"{len(letters) + len(old)} event letters listing {events} rejected events"

    dry = redrive.redrive(sqs, world.dlq_url, world.queue_url, dry_run=True, out=io.StringIO())
    summary = redrive.redrive(sqs, world.dlq_url, world.queue_url, out=io.StringIO())

    for run in (dry, summary):
        assert (run.moved, run.skipped, run.failed) == (len(GARBAGE), len(letters) + len(old), 0)
        assert (run.skipped_events, run.skipped_event_count) == (len(letters) + len(old), events)
        assert f"{skipped} (not submissions)" in run.text()
    all_visible(emulator, world.dlq_url, len(letters) + len(old))
    assert sorted(m["Body"] for m in drain_queue(emulator, world.queue_url)) == GARBAGE
    left = drain_queue(emulator, world.dlq_url)
    assert sorted(m["Body"] for m in left) == sorted(x.body for x in [*letters, *old])
    assert kept <= {m["MessageId"] for m in left}


async def test_redriven_submissions_are_processed_again(
    emulator: Emulator, world: World, daemon: Any
) -> None:
    """A submission SQS moved to the DLQ (no reason attached) is published once redriven."""
    sqs = client(emulator, "sqs")
    await asyncio.to_thread(sqs.send_message, QueueUrl=world.dlq_url, MessageBody=POISON)
    summary = await asyncio.to_thread(
        redrive.redrive, sqs, world.dlq_url, world.queue_url, out=io.StringIO()
    )
    assert summary.moved == 1
    running = await daemon(settings_for(world))
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    assert await running.stop() == 0
    records = await asyncio.to_thread(read_stream, client(emulator, "kinesis"), world.stream_name)
    assert len(records) == 3
    assert await asyncio.to_thread(queue_depth, emulator, world.dlq_url) == 0
    with pytest.raises(ValueError, match="same queue"):
        redrive.redrive(sqs, world.dlq_url, world.dlq_url)


class FlakySqs:
    """The emulator's SQS client, except that some batch entries fail, as SQS reports them.

    A failed SendMessageBatch entry is not sent; a failed DeleteMessageBatch entry is not
    deleted. Every delete entry is recorded.
    """

    def __init__(
        self, sqs: Any, *, fail_send: Collection[str] = (), fail_delete: Collection[str] = ()
    ) -> None:
        self._sqs = sqs
        self._fail_send = fail_send
        self._fail_delete = fail_delete
        self._body_of_handle: dict[str, str] = {}
        self.deleted_bodies: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def receive_message(self, **kwargs: Any) -> Any:
        response = self._sqs.receive_message(**kwargs)
        for message in response.get("Messages", []):
            self._body_of_handle[message["ReceiptHandle"]] = message["Body"]
        return response

    @staticmethod
    def _failure(entry_id: str) -> dict[str, Any]:
        return {"Id": entry_id, "SenderFault": False, "Code": "InternalError", "Message": "test"}

    def send_message_batch(self, *, QueueUrl: str, Entries: list[Any]) -> Any:
        passing = [e for e in Entries if e["MessageBody"] not in self._fail_send]
        failing = [e for e in Entries if e["MessageBody"] in self._fail_send]
        response = (
            self._sqs.send_message_batch(QueueUrl=QueueUrl, Entries=passing)
            if passing
            else {"Successful": []}
        )
        response["Failed"] = response.get("Failed", []) + [self._failure(e["Id"]) for e in failing]
        return response

    def delete_message_batch(self, *, QueueUrl: str, Entries: list[Any]) -> Any:
        bodies = {e["Id"]: self._body_of_handle[e["ReceiptHandle"]] for e in Entries}
        self.deleted_bodies += bodies.values()
        passing = [e for e in Entries if bodies[e["Id"]] not in self._fail_delete]
        failing = [e for e in Entries if bodies[e["Id"]] in self._fail_delete]
        response = self._sqs.delete_message_batch(QueueUrl=QueueUrl, Entries=passing)
        response["Failed"] = response.get("Failed", []) + [self._failure(e["Id"]) for e in failing]
        return response


def test_redrive_deletes_only_what_was_sent(emulator: Emulator, world: World) -> None:
    """A failed send entry is not deleted: it stays in the DLQ, visible, and counts as failed."""
    put_letters(
        client(emulator, "sqs"), world.dlq_url, [x for b in GARBAGE for x in letters_for(b)]
    )
    sqs = FlakySqs(client(emulator, "sqs"), fail_send={GARBAGE[1]})
    err = io.StringIO()

    summary = redrive.redrive(sqs, world.dlq_url, world.queue_url, out=io.StringIO(), err=err)

    assert (summary.moved, summary.failed) == (2, 1)
    assert sorted(sqs.deleted_bodies) == [GARBAGE[0], GARBAGE[2]], "deletes only the sent ones"
    assert "not sent (InternalError: test), kept in the DLQ" in err.getvalue()
    all_visible(emulator, world.dlq_url, 1)
    assert [m["Body"] for m in drain_queue(emulator, world.dlq_url)] == [GARBAGE[1]]
    assert sorted(m["Body"] for m in drain_queue(emulator, world.queue_url)) == [
        GARBAGE[0],
        GARBAGE[2],
    ]


def test_redrive_reports_a_failed_delete(emulator: Emulator, world: World) -> None:
    """Sent but not deleted: reported as failed (in both queues) and left visible in the DLQ."""
    put_letters(
        client(emulator, "sqs"), world.dlq_url, [x for b in GARBAGE for x in letters_for(b)]
    )
    sqs = FlakySqs(client(emulator, "sqs"), fail_delete={GARBAGE[0]})
    err = io.StringIO()

    summary = redrive.redrive(sqs, world.dlq_url, world.queue_url, out=io.StringIO(), err=err)

    assert (summary.moved, summary.failed) == (2, 1)
    assert "it is now in both queues" in err.getvalue()
    all_visible(emulator, world.dlq_url, 1)
    assert [m["Body"] for m in drain_queue(emulator, world.dlq_url)] == [GARBAGE[0]]
    assert sorted(m["Body"] for m in drain_queue(emulator, world.queue_url)) == GARBAGE


def test_redrive_stops_without_loss_when_sends_fail(
    emulator: Emulator, world: World, proxy: FaultProxy
) -> None:
    """SendMessageBatch down (HTTP 500 after botocore's retries): nothing deleted, all visible."""
    put_letters(
        client(emulator, "sqs"), world.dlq_url, [x for b in GARBAGE for x in letters_for(b)]
    )
    proxy.configure(fail_operations=frozenset({"SendMessageBatch"}))
    sqs = aws.client(Settings(endpoint_url=proxy.endpoint_url, aws_region=emulator.region), "sqs")

    summary = redrive.redrive(
        sqs, world.dlq_url, world.queue_url, out=io.StringIO(), err=io.StringIO()
    )

    assert proxy.calls("SendMessageBatch") == 3, "botocore's standard mode: 3 attempts"
    assert proxy.calls("DeleteMessageBatch") == 0
    assert (summary.moved, summary.failed) == (0, 3)
    assert summary.aborted is not None
    assert "aborted" in summary.text()
    all_visible(emulator, world.dlq_url, 3)
    assert queue_depth(emulator, world.queue_url) == 0


def test_dry_run_changes_nothing(emulator: Emulator, world: World) -> None:
    """A dry run lists what would move and leaves both queues as they were, all visible."""
    ids = mixed_dlq(emulator, world)
    out = io.StringIO()

    summary = redrive.redrive(
        client(emulator, "sqs"),
        world.dlq_url,
        world.queue_url,
        reason="not_an_object",
        dry_run=True,
        verbose=True,
        out=out,
    )

    assert (summary.moved, summary.skipped, summary.failed) == (2, 6, 0)
    assert summary.text().startswith("dry run, nothing changed: would move 2, skipped 6")
    listed = [line.split()[2] for line in out.getvalue().splitlines()]
    assert sorted(listed) == sorted(ids["not_an_object"])
    all_visible(emulator, world.dlq_url, 8)
    assert queue_depth(emulator, world.queue_url) == 0


def test_redrive_respects_the_rate(emulator: Emulator, world: World) -> None:
    """N messages at R msgs/s take at least (N - 1) / R seconds, and all of them move."""
    count, rate = 7, 4.0
    bodies = [f"junk {i}" for i in range(count)]
    put_letters(client(emulator, "sqs"), world.dlq_url, [x for b in bodies for x in letters_for(b)])

    started = time.monotonic()
    summary = redrive.redrive(
        client(emulator, "sqs"), world.dlq_url, world.queue_url, rate=rate, out=io.StringIO()
    )
    elapsed = time.monotonic() - started

    assert summary.moved == count
    assert elapsed >= (count - 1) / rate
    assert sorted(m["Body"] for m in drain_queue(emulator, world.queue_url)) == sorted(bodies)


def test_pacer_spaces_batches_on_its_clock() -> None:
    """Pacer: message i is due at start + i / rate; batches are at most one second's worth."""
    now = [100.0]
    waits: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            assert timeout is not None
            waits.append(round(timeout, 6))
            now[0] += timeout
            return False

    pacer = redrive.Pacer(2.5, Stop(), clock=lambda: now[0])
    assert pacer.batch_size == 2
    for _ in range(3):
        assert pacer.wait(2)
        pacer.sent(2)
    # Messages 0..5 due at 0, 0.4, ..., 2.0 s: each batch waits for its last message.
    assert waits == [0.4, 0.8, 0.8]
    assert redrive.Pacer(None, threading.Event()).batch_size == 10
    assert redrive.Pacer(0.5, threading.Event()).batch_size == 1


def test_redrive_max_moves_at_most_n(emulator: Emulator, world: World) -> None:
    """--max N moves N messages; the others are released at once."""
    bodies = [f"junk {i}" for i in range(5)]
    put_letters(client(emulator, "sqs"), world.dlq_url, [x for b in bodies for x in letters_for(b)])

    summary = redrive.redrive(
        client(emulator, "sqs"), world.dlq_url, world.queue_url, max_messages=2, out=io.StringIO()
    )

    assert (summary.moved, summary.failed) == (2, 0)
    all_visible(emulator, world.dlq_url, 3)
    assert queue_depth(emulator, world.queue_url) == 2


def test_redrive_reaches_messages_behind_many_skipped_ones(
    emulator: Emulator, world: World
) -> None:
    """Skipped messages are held during the scan, so the ones behind them are reached too."""
    sqs = client(emulator, "sqs")
    put_letters(sqs, world.dlq_url, [x for i in range(25) for x in letters_for(encode([i]))])
    put_letters(sqs, world.dlq_url, [x for b in GARBAGE for x in letters_for(b)])

    summary = redrive.redrive(
        sqs, world.dlq_url, world.queue_url, reason="invalid_body", out=io.StringIO()
    )

    assert (summary.moved, summary.skipped, summary.failed) == (3, 25, 0)
    all_visible(emulator, world.dlq_url, 25)


def test_redrive_stops_when_asked(emulator: Emulator, world: World) -> None:
    """A stop request (Ctrl-C) before a batch goes: nothing more moves, everything is released."""
    put_letters(
        client(emulator, "sqs"), world.dlq_url, [x for b in GARBAGE for x in letters_for(b)]
    )
    stop = threading.Event()
    stop.set()
    summary = redrive.redrive(
        client(emulator, "sqs"), world.dlq_url, world.queue_url, out=io.StringIO(), stop=stop
    )
    assert summary.interrupted
    assert summary.moved == 0
    all_visible(emulator, world.dlq_url, 3)


# --------------------------------------------------------------------------------------------
# A run bounded by its start, that ends by itself


class RejectsAtOnce:
    """The emulator's SQS client, as if a daemon dead-lettered every message sent to the source
    queue the moment it arrived, as invalid_body with the new message's id: the loop of issue
    20 (one submission moved 28,190 times), without a daemon's timing."""

    def __init__(self, sqs: Any, queue_url: str, dlq_url: str) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._dlq_url = dlq_url
        self.sent_to_source = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def send_message_batch(self, *, QueueUrl: str, Entries: list[Any]) -> Any:
        response = self._sqs.send_message_batch(QueueUrl=QueueUrl, Entries=Entries)
        if QueueUrl == self._queue_url:
            bodies = {entry["Id"]: entry["MessageBody"] for entry in Entries}
            self.sent_to_source += len(response.get("Successful", []))
            for entry in response.get("Successful", []):
                body = bodies[entry["Id"]]
                message = received_message(body, message_id=entry["MessageId"])
                rejection = Rejection(Reason.INVALID_BODY, None, "still not JSON")
                put_letters(
                    self._sqs,
                    self._dlq_url,
                    [submission_letter(source_message(message), body, rejection)],
                )
        return response


def test_what_a_run_caused_is_never_moved_again(emulator: Emulator, world: World) -> None:
    """Letters that come back as soon as they are moved are moved once, counted as rejected
    again, and left in the DLQ; the run ends by itself."""
    sqs = client(emulator, "sqs")
    originals = put_letters(sqs, world.dlq_url, [x for b in GARBAGE for x in letters_for(b)])
    rejecting = RejectsAtOnce(sqs, world.queue_url, world.dlq_url)
    out = io.StringIO()

    summary = redrive.redrive(rejecting, world.dlq_url, world.queue_url, out=out)

    assert rejecting.sent_to_source == len(GARBAGE), "each original sent once, no copy again"
    assert (summary.moved, summary.failed) == (len(GARBAGE), 0)
    assert summary.rejected_again == {"invalid_body": len(GARBAGE)}
    assert (summary.complete, summary.interrupted) == (True, False)
    assert summary.settled == redrive.SETTLED_UNTAKEN, "nothing takes from the source queue"
    text = summary.text()
    assert "rejected again: 3 (invalid_body: 3)" in text
    assert "the cause is not fixed" in text
    assert "run again" not in text
    left = drain_queue(emulator, world.dlq_url)
    assert sorted(m["Body"] for m in left) == GARBAGE
    assert not {m["MessageId"] for m in left} & set(originals)
    assert queue_depth(emulator, world.queue_url) == len(GARBAGE)


class SentLater:
    """The emulator's SQS client, except that messages whose body is in `later` are reported as
    sent an hour after they were: letters that arrived after the run's start."""

    def __init__(self, sqs: Any, later: Collection[str]) -> None:
        self._sqs = sqs
        self._later = later

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def receive_message(self, **kwargs: Any) -> Any:
        response = self._sqs.receive_message(**kwargs)
        for message in response.get("Messages", []):
            if message["Body"] in self._later:
                sent = int(message["Attributes"]["SentTimestamp"]) + 3_600_000
                message["Attributes"]["SentTimestamp"] = str(sent)
        return response


def test_letters_sent_after_the_start_are_left_alone(emulator: Emulator, world: World) -> None:
    """Letters sent after the start are neither moved nor counted, by a run, a dry run or
    inspect; each says how many arrived; all stay visible in the DLQ."""
    later = [f"later {i}" for i in range(12)]
    sqs = client(emulator, "sqs")
    put_letters(sqs, world.dlq_url, [x for b in [*GARBAGE, *later] for x in letters_for(b)])
    shifted = SentLater(sqs, later)

    dry = redrive.redrive(shifted, world.dlq_url, world.queue_url, dry_run=True)
    report = inspect.inspect_dlq(shifted, world.dlq_url)
    summary = redrive.redrive(shifted, world.dlq_url, world.queue_url)

    assert (dry.moved, dry.arrived, dry.complete) == (len(GARBAGE), len(later), True)
    assert (report.read, report.arrived_after_start) == (len(GARBAGE), len(later))
    assert (summary.moved, summary.arrived, summary.complete) == (len(GARBAGE), len(later), True)
    assert "arrived after the start: 12 letters, not moved" in summary.text()
    all_visible(emulator, world.dlq_url, len(later))
    assert sorted(m["Body"] for m in drain_queue(emulator, world.queue_url)) == GARBAGE


def test_start_is_read_from_sqs_clock(emulator: Emulator, world: World) -> None:
    """The start is SQS's Date plus the margin, not the host's clock: a letter sent before it
    is held by it."""
    sqs = client(emulator, "sqs")
    put_letters(sqs, world.dlq_url, letters_for(GARBAGE[0]))
    start = peek.start_of(sqs, world.dlq_url, clock=lambda: 0.0)
    with peek.peek(sqs, world.dlq_url) as scan:
        [letter] = list(scan)
    sent_ms = int(letter.system["SentTimestamp"])
    assert start.holds(letter)
    assert 0 < start.sent_by_ms - sent_ms <= peek.START_MARGIN_MS + 1000
    assert (start.approximate_visible, start.approximate_not_visible) == (1, 0)


INVALID = 12  # letters of bodies that are still not JSON
VALID = 3  # submissions SQS's redrive policy moved (no reason): they publish now


async def test_redrive_ends_while_the_daemon_rejects_again(
    emulator: Emulator, world: World, daemon: Any
) -> None:
    """With the daemon running on the same world, the run ends by itself: each letter that was
    there moved once, the invalid ones counted as rejected again and left in the DLQ, the
    valid ones published, event letters left alone."""
    sqs = client(emulator, "sqs")
    invalid = [f"still not json {i}" for i in range(INVALID)]
    rejectable = [*invalid, *ARRAYS, BAD_ID]
    valid = [encode(submission()) for _ in range(VALID)]

    def fill() -> list[str]:
        ids = put_letters(sqs, world.dlq_url, [x for b in rejectable for x in letters_for(b)])
        ids += put_letters(sqs, world.dlq_url, letters_for(BAD_EVENTS))  # an event letter
        for body in valid:
            ids.append(sqs.send_message(QueueUrl=world.dlq_url, MessageBody=body)["MessageId"])
        return ids

    originals = await asyncio.to_thread(fill)
    running = await daemon(settings_for(world))
    out, err = io.StringIO(), io.StringIO()

    summary = await asyncio.wait_for(
        asyncio.to_thread(
            redrive.redrive, sqs, world.dlq_url, world.queue_url, verbose=True, out=out, err=err
        ),
        timeout=60,
    )

    assert (summary.moved, summary.failed) == (len(rejectable) + VALID, 0), err.getvalue()
    assert summary.rejected_again == {
        "invalid_body": INVALID,
        "not_an_object": len(ARRAYS),
        "invalid_field": 1,
    }
    assert (summary.skipped_events, summary.arrived) == (1, 0)
    assert (summary.complete, summary.settled) == (True, redrive.SETTLED_TAKEN)
    moved_ids = [line.split()[1] for line in out.getvalue().splitlines()]
    assert sorted(moved_ids) == sorted(originals[: len(rejectable)] + originals[-VALID:])
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    # The daemon received each moved submission once: no letter was moved twice.
    assert running.metric("event_processor_messages_received_total") == summary.moved
    assert running.metric("event_processor_submissions_total", {"outcome": "published"}) == VALID
    assert await running.stop() == 0

    left = await asyncio.to_thread(drain_queue, emulator, world.dlq_url)
    kept = [m for m in left if m["MessageId"] in originals]
    again = [m for m in left if m["MessageId"] not in originals]
    assert len(kept) == 1, "the event letter stays"
    assert sorted(m["Body"] for m in again) == sorted(rejectable), "each rejected again once"
    records = await asyncio.to_thread(read_stream, client(emulator, "kinesis"), world.stream_name)
    assert len(records) == 3 * VALID


class Spy:
    """The emulator's SQS client, recording the `source_message_id` of every message received."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs
        self.source_of: dict[str, str | None] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def receive_message(self, **kwargs: Any) -> Any:
        response = self._sqs.receive_message(**kwargs)
        for message in response.get("Messages", []):
            source = (message.get("MessageAttributes") or {}).get("source_message_id")
            self.source_of[message["MessageId"]] = source and source["StringValue"]
        return response


async def test_redrive_ends_under_live_traffic(
    emulator: Emulator, world: World, daemon: Any
) -> None:
    """While sensors keep sending bad submissions that the daemon keeps dead-lettering, a run
    still ends by itself, has moved every letter that was there, and never a letter that one
    of its own moves came back as."""
    sqs = client(emulator, "sqs")
    invalid = [f"still not json {i}" for i in range(INVALID)]
    originals = await asyncio.to_thread(
        put_letters, sqs, world.dlq_url, [x for b in invalid for x in letters_for(b)]
    )
    running = await daemon(settings_for(world))
    sending = threading.Event()
    sent_live: list[str] = []

    def traffic() -> None:
        live = client(emulator, "sqs")
        while not sending.wait(0.02):  # a sensor's pace, not a synchronisation
            body = f"live {len(sent_live)}"
            live.send_message(QueueUrl=world.queue_url, MessageBody=body)
            sent_live.append(body)

    sender = threading.Thread(target=traffic)
    sender.start()
    spy = Spy(sqs)
    out = io.StringIO()
    try:
        summary = await asyncio.wait_for(
            asyncio.to_thread(
                redrive.redrive,
                spy,
                world.dlq_url,
                world.queue_url,
                verbose=True,
                out=out,
                err=io.StringIO(),
                settle_s=2,
            ),
            timeout=60,
        )
        assert sender.is_alive(), "the run ended while the traffic went on"
    finally:
        sending.set()
        await asyncio.to_thread(sender.join)

    moves = [line.split() for line in out.getvalue().splitlines()]
    moved, new_ids = {m[1] for m in moves}, {m[3] for m in moves}
    assert len(moves) == len(moved) == summary.moved, "each letter moved at most once"
    assert set(originals) <= moved, "every letter that was there moved"
    assert all(spy.source_of[old] not in new_ids for old in moved), "none its own moves caused"
    assert summary.rejected_again.total() > 0
    assert summary.arrived > 0, "the live letters after the start were left alone"
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    received = running.metric("event_processor_messages_received_total")
    assert received == len(sent_live) + summary.moved
    assert await running.stop() == 0


# --------------------------------------------------------------------------------------------
# The dry run's check


FIXED = encode(submission())  # dead-lettered as invalid_body by an older contract; valid now


def old_rejection(body: str) -> Any:
    """`body` dead-lettered as invalid_body, as an older contract would have."""
    rejection = Rejection(Reason.INVALID_BODY, None, "an older contract's rejection")
    return submission_letter(source_message(message_for(body)), body, rejection)


def test_dry_run_checks_each_letter_against_the_contract(emulator: Emulator, world: World) -> None:
    """The dry run says which letters would publish and which would be rejected again, by
    reason, with rejected events counted, and shows bodies decoded; nothing changes."""
    sqs = client(emulator, "sqs")
    put_letters(sqs, world.dlq_url, [x for b in [*GARBAGE, *ARRAYS] for x in letters_for(b)])
    put_letters(sqs, world.dlq_url, [old_rejection(FIXED)])
    sqs.send_message(QueueUrl=world.dlq_url, MessageBody=BAD_EVENTS)  # SQS's redrive policy
    out = io.StringIO()

    summary = redrive.redrive(sqs, world.dlq_url, world.queue_url, dry_run=True, out=out)

    assert out.getvalue() == "", "no line per letter without --verbose"
    assert summary.verdicts == {
        recheck.PUBLISH: 2,
        "invalid_body": len(GARBAGE),
        "not_an_object": len(ARRAYS),
    }
    events = rejected_by_reason(BAD_EVENTS)
    assert summary.events_rejected == events
    text = summary.text()
    assert (
        "checked against the current contract (signatures not checked: AUTH_MODE=off): would"
        f" publish 2 (with {events.total()} rejected events: {counts(events)})"
        ", would be rejected again 5 (invalid_body: 3, not_an_object: 2)"
    ) in text, text
    assert "examples (would be rejected again: invalid_body):" in text
    assert "body is neither base64-encoded JSON nor JSON" in text
    assert '(base64-decoded) {"submission_id": ' in text, "previews are decoded"
    assert FIXED[:40] not in text, "not the raw base64"
    doc = summary.as_json()["check"]
    assert (doc["would_publish"], doc["would_be_rejected_again"]) == (2, 5)
    all_visible(emulator, world.dlq_url, 7)
    assert queue_depth(emulator, world.queue_url) == 0


def signed_letter(doc: dict[str, Any], *, device: str, key_id: str, master: bytes) -> Any:
    """`doc` signed by `device`, dead-lettered as unknown_key (its key was not in the set)."""
    body = encode(doc)
    device_key = KeySet.parse(key_set_text({key_id: master})).device_key(key_id, device)
    attributes = signature_attributes(device_key, key_id, device, body)
    rejection = Rejection(Reason.UNKNOWN_KEY, SIGNATURE_ATTRIBUTE, "not in the key set")
    return submission_letter(
        source_message(message_for(body, attributes)), body, rejection
    ), attributes


def test_dry_run_checks_signatures_as_the_daemon_would(emulator: Emulator, world: World) -> None:
    """With a key set, the dry run verifies each letter's signature as the daemon does (enforce:
    rejected again; monitor: published) and never prints a key or a signature."""
    sqs = client(emulator, "sqs")
    good, good_attributes = signed_letter(
        submission(device_id=DEVICE_A), device=DEVICE_A, key_id="k1", master=K1
    )
    unknown, unknown_attributes = signed_letter(
        submission(device_id=DEVICE_A), device=DEVICE_A, key_id="k2", master=K2
    )
    swapped, _ = signed_letter(
        submission(device_id=DEVICE_B), device=DEVICE_A, key_id="k1", master=K1
    )
    put_letters(sqs, world.dlq_url, [good, unknown, swapped])
    sqs.send_message(QueueUrl=world.dlq_url, MessageBody=POISON)  # unsigned
    keys = KeySet.parse(key_set_text({"k1": K1}))

    enforced = redrive.redrive(
        sqs,
        world.dlq_url,
        world.queue_url,
        dry_run=True,
        verbose=True,
        out=io.StringIO(),
        check=recheck.ContractCheck(keys),
    )
    monitored = redrive.redrive(
        sqs,
        world.dlq_url,
        world.queue_url,
        dry_run=True,
        check=recheck.ContractCheck(keys, enforce=False),
    )

    assert enforced.verdicts == {
        recheck.PUBLISH: 1,
        "unknown_key": 1,
        "device_mismatch": 1,
        "signature_missing": 1,
    }
    assert monitored.verdicts == {recheck.PUBLISH: 4}
    text = enforced.text() + json.dumps(enforced.as_json())
    assert "signatures checked (enforce) against key ids k1" in text
    for attributes in (good_attributes, unknown_attributes):
        value = attributes[SIGNATURE_ATTRIBUTE]["StringValue"]
        assert value.rsplit("s=", 1)[1] not in text, "no MAC shown"
    for key in (K1, K2):
        assert key_set_text({"k": key}).split('"')[5] not in text, "no key shown"
    all_visible(emulator, world.dlq_url, 4)


# --------------------------------------------------------------------------------------------
# The command: --json, --quiet, --reason


def run_command(world: World, *flags: str) -> tuple[int, str]:
    """`event-processor dlq redrive FLAGS` in this process, against `world`: (exit code, stdout)."""
    args = cli.build_parser().parse_args(
        ["dlq", "redrive", "--endpoint-url", world.endpoint_url, "--aws-region", world.region,
         "--dlq-url", world.dlq_url, "--queue-url", world.queue_url, *flags]
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
