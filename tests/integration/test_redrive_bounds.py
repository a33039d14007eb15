"""`dlq redrive` bounded by its start: only what was in the DLQ when it started moves, each
letter at most once; what the daemon dead-letters again meanwhile is counted and left; the
run ends by itself, under live traffic too."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Collection
from typing import Any

from devworld.emulator import Emulator, World, read_stream
from event_processor.contract.letters import submission_letter
from event_processor.contract.rules import Reason, Rejection
from event_processor.pipeline.submission import source_message
from event_processor.tools import (
    inspect,
    peek,
    redrive,
    redrive_report,
    tally,
)
from tests.conftest import settings_for
from tests.factories import encode, received_message, submission
from tests.helpers import client, drain_queue, eventually, queue_depth
from tests.integration.support import (
    ARRAYS,
    BAD_EVENTS,
    BAD_ID,
    GARBAGE,
    all_visible,
    letters_for,
    put_letters,
)


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
    assert summary.settled == tally.SETTLED_UNTAKEN, "nothing takes from the source queue"
    text = redrive_report.text(summary)
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
    assert (report.read, report.arrived) == (len(GARBAGE), len(later))
    assert (summary.moved, summary.arrived, summary.complete) == (len(GARBAGE), len(later), True)
    assert "arrived after the start: 12 letters, not moved" in redrive_report.text(summary)
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
    assert (summary.complete, summary.settled) == (True, tally.SETTLED_TAKEN)
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
