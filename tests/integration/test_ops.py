"""Operator tools (dlq_tools.py, tail.py) against the emulator: dlq inspect, dlq redrive, tail."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import uuid
from collections.abc import Collection
from typing import Any

import orjson
import pytest

from event_processor import dlq_tools, ops
from event_processor.dlq import DeadLetter, event_letters, submission_letter
from event_processor.emulator import Emulator, World, read_stream
from event_processor.faultproxy import FaultProxy
from event_processor.models import Rejection, parse_submission
from event_processor.source import Message
from event_processor.tail import tail
from tests.conftest import settings_for
from tests.factories import encode, new_process, submission
from tests.helpers import client, drain_queue, eventually, queue_depth, send_bodies

TRACE = {"trace": {"DataType": "String", "StringValue": "trace-1"}}


def letters_for(body: str, attributes: dict[str, Any] | None = None) -> list[DeadLetter]:
    """The dead letters the daemon writes for `body`, built by the daemon's own code."""
    message = Message(
        message_id=str(uuid.uuid4()),
        receipt_handle="-",
        body=body,
        receive_count=1,
        sent_at_s=None,
        attributes=attributes or {},
        received_at=0.0,
        visible_until=0.0,
    )
    parsed = parse_submission(body)
    if isinstance(parsed, Rejection):
        return [submission_letter(message, parsed)]
    return event_letters(message, parsed)


def put_letters(sqs: Any, dlq_url: str, letters: list[DeadLetter]) -> list[str]:
    """Send dead letters to the DLQ as the daemon does; return their message ids in order."""
    ids: list[str] = []
    for start in range(0, len(letters), 10):
        chunk = letters[start : start + 10]
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


def mixed_dlq(emulator: Emulator, world: World) -> dict[str, list[str]]:
    """9 dead letters of every shape: {label: [message ids]}."""
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
    assert dlq_tools.queue_counts(client(emulator, "sqs"), queue_url) == (expected, 0)


def test_letter_kind_is_decided_by_the_whole_shape() -> None:
    """Only the daemon's event document, with its own source message id, is an event letter."""
    event = letters_for(BAD_EVENTS)[0]
    assert dlq_tools.letter_kind(event.body, event.attributes) == "event"
    other = letters_for(BAD_ID)[0]
    assert dlq_tools.letter_kind(event.body, other.attributes) == "submission", (
        "another message's id"
    )
    assert dlq_tools.letter_kind(event.body, {}) == "submission", "moved by SQS: no attributes"
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    for body in (deep, '{"reason": "x"}', "[1]", "{not json", ""):
        assert dlq_tools.letter_kind(body, event.attributes) == "submission"


# --------------------------------------------------------------------------------------------
# dlq inspect


def test_inspect_counts_by_reason_and_kind_without_consuming(
    emulator: Emulator, world: World
) -> None:
    """Counts per reason and kind, K examples per reason; the DLQ is left exactly as it was."""
    ids = mixed_dlq(emulator, world)
    sqs = client(emulator, "sqs")
    all_visible(emulator, world.dlq_url, 9)

    report = dlq_tools.inspect_dlq(sqs, world.dlq_url, max_messages=100, examples=2)

    all_visible(emulator, world.dlq_url, 9)
    assert not report.sample
    assert report.read == 9
    assert dict(report.counts) == {
        ("invalid_body", "submission"): 3,
        ("not_an_object", "submission"): 2,
        ("invalid_field", "submission"): 1,
        ("invalid_field", "event"): 2,
        ("none", "submission"): 1,
    }
    assert report.by_reason()[0] == ("invalid_body", {"submission": 3})
    assert {r: len(x) for r, x in report.examples.items()} == {
        "invalid_body": 2,
        "not_an_object": 2,
        "invalid_field": 2,
        "none": 1,
    }
    garbage = report.examples["invalid_body"][0]
    assert garbage.body in GARBAGE
    assert garbage.attributes["trace"]["StringValue"] == "trace-1"

    text = dlq_tools.format_report(report)
    assert "SAMPLE" not in text
    assert "not json" in text
    assert '"events": {"new_process"' in text, "base64 bodies are shown decoded too"
    doc = dlq_tools.report_json(report)
    assert doc["reasons"][0] == {"reason": "invalid_body", "total": 3, "by_kind": {"submission": 3}}
    assert doc["examples"]["invalid_body"][0]["attributes"]["reason"] == "invalid_body"

    remaining = {m["MessageId"] for m in drain_queue(emulator, world.dlq_url)}
    assert remaining == {i for group in ids.values() for i in group}, "nothing was consumed"


def test_inspect_says_when_counts_are_a_sample(emulator: Emulator, world: World) -> None:
    """More messages than read: deduplicated by MessageId, reported as a sample, none hidden."""
    sqs = client(emulator, "sqs")
    put_letters(sqs, world.dlq_url, [x for i in range(25) for x in letters_for(f"junk {i}")])

    small = dlq_tools.inspect_dlq(sqs, world.dlq_url, max_messages=7, examples=100)
    assert (small.read, small.sample) == (7, True)
    assert "SAMPLE: 7 of ~25 messages (stopped at --max 7)" in dlq_tools.format_report(small)
    all_visible(emulator, world.dlq_url, 25)

    # moto hands out the same (oldest) messages to every VisibilityTimeout=0 receive.
    big = dlq_tools.inspect_dlq(sqs, world.dlq_url, max_messages=1000, examples=1000)
    seen = [letter.message_id for letter in big.examples["invalid_body"]]
    assert len(seen) == len(set(seen)) == big.read == sum(big.counts.values())
    assert big.read < 25
    assert big.sample
    assert "SQS returned nothing new" in dlq_tools.format_report(big)
    all_visible(emulator, world.dlq_url, 25)


def test_inspect_of_an_empty_dlq(emulator: Emulator, world: World) -> None:
    """An empty DLQ is reported as such."""
    report = dlq_tools.inspect_dlq(client(emulator, "sqs"), world.dlq_url)
    assert (report.read, report.sample) == (0, False)
    assert "looks empty" in dlq_tools.format_report(report)


async def test_inspect_reads_what_the_daemon_dead_lettered(
    emulator: Emulator, world: World, daemon: Any
) -> None:
    """The daemon's real dead letters are classified by reason and kind."""
    bodies = [*GARBAGE[:2], ARRAYS[0], BAD_EVENTS, encode(submission())]
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, bodies)
    running = await daemon(settings_for(world))
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    assert await running.stop() == 0

    report = await asyncio.to_thread(dlq_tools.inspect_dlq, client(emulator, "sqs"), world.dlq_url)
    assert dict(report.counts) == {
        ("invalid_body", "submission"): 2,
        ("not_an_object", "submission"): 1,
        ("invalid_field", "event"): 2,
    }
    await asyncio.to_thread(all_visible, emulator, world.dlq_url, 5)


# --------------------------------------------------------------------------------------------
# dlq redrive


def test_redrive_moves_only_the_chosen_reason(emulator: Emulator, world: World) -> None:
    """Only invalid_body moves, with our attributes stripped; the rest stays, visible at once."""
    ids = mixed_dlq(emulator, world)
    out, err = io.StringIO(), io.StringIO()

    summary = dlq_tools.redrive(
        client(emulator, "sqs"),
        world.dlq_url,
        world.queue_url,
        reason="invalid_body",
        out=out,
        err=err,
    )

    assert (summary.moved, summary.skipped, summary.failed) == (3, 6, 0)
    assert summary.skipped_events == 2
    assert dict(summary.skipped_other) == {"not_an_object": 2, "invalid_field": 1, "none": 1}
    assert not summary.aborted
    assert err.getvalue() == ""
    assert out.getvalue().count("moved ") == 3
    all_visible(emulator, world.dlq_url, 6)

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

    summary = dlq_tools.redrive(
        client(emulator, "sqs"), world.dlq_url, world.queue_url, out=io.StringIO()
    )

    assert (summary.moved, summary.skipped_events, summary.failed) == (7, 2, 0)
    assert "2 rejected-event letters (not submissions)" in summary.text()
    all_visible(emulator, world.dlq_url, 2)
    assert {m["MessageId"] for m in drain_queue(emulator, world.dlq_url)} == set(ids["events"])
    bodies = sorted(m["Body"] for m in drain_queue(emulator, world.queue_url))
    assert bodies == sorted([*GARBAGE, *ARRAYS, BAD_ID, POISON])


async def test_redriven_submissions_are_processed_again(
    emulator: Emulator, world: World, daemon: Any
) -> None:
    """A submission SQS moved to the DLQ (no reason attached) is published once redriven."""
    sqs = client(emulator, "sqs")
    await asyncio.to_thread(sqs.send_message, QueueUrl=world.dlq_url, MessageBody=POISON)
    summary = await asyncio.to_thread(
        dlq_tools.redrive, sqs, world.dlq_url, world.queue_url, out=io.StringIO()
    )
    assert summary.moved == 1
    running = await daemon(settings_for(world))
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    assert await running.stop() == 0
    records = await asyncio.to_thread(read_stream, client(emulator, "kinesis"), world.stream_name)
    assert len(records) == 3
    assert await asyncio.to_thread(queue_depth, emulator, world.dlq_url) == 0
    with pytest.raises(ValueError, match="same queue"):
        dlq_tools.redrive(sqs, world.dlq_url, world.dlq_url)


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

    summary = dlq_tools.redrive(sqs, world.dlq_url, world.queue_url, out=io.StringIO(), err=err)

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

    summary = dlq_tools.redrive(sqs, world.dlq_url, world.queue_url, out=io.StringIO(), err=err)

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
    sqs = ops.aws_client("sqs", endpoint_url=proxy.endpoint_url, region=emulator.region)

    summary = dlq_tools.redrive(
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

    summary = dlq_tools.redrive(
        client(emulator, "sqs"),
        world.dlq_url,
        world.queue_url,
        reason="not_an_object",
        dry_run=True,
        out=out,
    )

    assert (summary.moved, summary.skipped, summary.failed) == (2, 7, 0)
    assert summary.text().startswith("dry run, nothing changed: would move 2, skipped 7")
    listed = [line.split()[2] for line in out.getvalue().splitlines()]
    assert sorted(listed) == sorted(ids["not_an_object"])
    all_visible(emulator, world.dlq_url, 9)
    assert queue_depth(emulator, world.queue_url) == 0


def test_redrive_respects_the_rate(emulator: Emulator, world: World) -> None:
    """N messages at R msgs/s take at least (N - 1) / R seconds, and all of them move."""
    count, rate = 7, 4.0
    bodies = [f"junk {i}" for i in range(count)]
    put_letters(client(emulator, "sqs"), world.dlq_url, [x for b in bodies for x in letters_for(b)])

    started = time.monotonic()
    summary = dlq_tools.redrive(
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

    pacer = dlq_tools.Pacer(2.5, Stop(), clock=lambda: now[0])
    assert pacer.batch_size == 2
    for _ in range(3):
        assert pacer.wait(2)
        pacer.sent(2)
    # Messages 0..5 due at 0, 0.4, ..., 2.0 s: each batch waits for its last message.
    assert waits == [0.4, 0.8, 0.8]
    assert dlq_tools.Pacer(None, threading.Event()).batch_size == 10
    assert dlq_tools.Pacer(0.5, threading.Event()).batch_size == 1


def test_redrive_max_moves_at_most_n(emulator: Emulator, world: World) -> None:
    """--max N moves N messages; the others are released at once."""
    bodies = [f"junk {i}" for i in range(5)]
    put_letters(client(emulator, "sqs"), world.dlq_url, [x for b in bodies for x in letters_for(b)])

    summary = dlq_tools.redrive(
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

    summary = dlq_tools.redrive(
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
    summary = dlq_tools.redrive(
        client(emulator, "sqs"), world.dlq_url, world.queue_url, out=io.StringIO(), stop=stop
    )
    assert summary.interrupted
    assert summary.moved == 0
    all_visible(emulator, world.dlq_url, 3)


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

    with pytest.raises(ops.OpsError, match="no shard shardId-000000000099"):
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
