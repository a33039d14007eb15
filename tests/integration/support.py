"""Dead letters and records for the operator-tool tests (tests/integration/test_inspect.py,
test_redrive*.py, tests/e2e/test_ops_cli.py): the letters the daemon's own code writes for
given bodies, DLQs of every shape, and JSON records for `tail`."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import orjson

from devworld.emulator import Emulator, World, read_stream
from event_processor import constants
from event_processor.contract.letters import (
    KIND_EVENTS,
    DeadLetter,
    event_letters,
    read_letter,
    submission_letter,
)
from event_processor.contract.parse import parse_submission
from event_processor.contract.rules import Rejection
from event_processor.pipeline.source import Message
from event_processor.pipeline.submission import source_message
from event_processor.tools import aws
from tests.factories import encode, new_process, received_message, submission
from tests.helpers import client

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
    source = source_message(message_for(body, attributes))
    parsed = parse_submission(body)
    if isinstance(parsed, Rejection):
        return [submission_letter(source, body, parsed)]
    return event_letters(source, parsed, max_message_bytes)


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


HUNDREDS = 250  # letters in the DLQ of the whole-DLQ tests: 25 pages of 10


def junk_dlq(emulator: Emulator, world: World, count: int = HUNDREDS) -> list[str]:
    """`count` rejected submissions (invalid_body) in the DLQ; their message ids."""
    letters = [x for i in range(count) for x in letters_for(f"junk {i}")]
    return put_letters(client(emulator, "sqs"), world.dlq_url, letters)


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
    """The rows of inspect_report.text's table: reason -> [submission, event, total, events]."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["reason"]) + 1
    rows: dict[str, list[str]] = {}
    for line in lines[start:]:
        if not line.strip() or line.strip().startswith("("):
            break
        reason, *columns = line.split()
        rows[reason] = columns
    return rows


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
