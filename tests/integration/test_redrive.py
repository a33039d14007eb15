"""`dlq redrive` against the emulator: what moves and how (by reason, never an event letter,
deleted only once sent, at the rate and up to --max), and how a run stops without loss.
The start bound is in test_redrive_bounds.py, the dry run in test_redrive_dry_run.py, the
command line in test_redrive_cli.py, FIFO queues in test_redrive_fifo.py."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Collection
from typing import Any

import pytest

from devworld.emulator import Emulator, World, read_stream
from devworld.faultproxy import FaultProxy
from event_processor.config import Settings
from event_processor.tools import (
    aws,
    redrive,
    redrive_report,
)
from tests.conftest import settings_for
from tests.factories import encode
from tests.helpers import client, drain_queue, eventually, queue_depth
from tests.integration.support import (
    ARRAYS,
    BAD_EVENTS,
    BAD_ID,
    GARBAGE,
    POISON,
    all_visible,
    letters_for,
    mixed_dlq,
    packed_dlq,
    put_letters,
    rejected_by_reason,
    v1_letters,
)


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
    assert "1 event letter listing 2 rejected events (not submissions)" in redrive_report.text(
        summary
    )
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
        assert f"{skipped} (not submissions)" in redrive_report.text(run)
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
    assert "aborted" in redrive_report.text(summary)
    all_visible(emulator, world.dlq_url, 3)
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
