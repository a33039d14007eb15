"""What the lean request path must answer as botocore's own path does, against any backend:
tests/integration/test_lean_path.py runs these against moto, tests/localstack/test_lean_path.py
against LocalStack. `sqs` and `kinesis` are that backend's boto3 clients, for setting up and
reading back."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from devworld.emulator import World, read_stream
from event_processor.aws.lean import LeanDlq, LeanSqs
from tests.helpers import lean_clients

# What differs between two receives of one message, or two answers to one call.
PER_RECEIVE = ("ReceiptHandle",)
PER_ANSWER = ("RequestId", "HTTPHeaders")


def metadata_shape(response: dict[str, Any]) -> dict[str, Any]:
    metadata = dict(response["ResponseMetadata"])
    for key in PER_ANSWER:
        assert key in metadata
        metadata.pop(key)
    return metadata


async def receive_matches_botocore(world: World, sqs: Any) -> None:
    """A message with String and Binary attributes reads the same on both paths."""
    sqs.send_message(
        QueueUrl=world.queue_url,
        MessageBody="héllo ✓",
        MessageAttributes={
            "text": {"DataType": "String", "StringValue": "a ✓"},
            "raw": {"DataType": "Binary", "BinaryValue": b"\x00\xff\x10 not utf-8 \xc3"},
        },
    )
    params: dict[str, Any] = {
        "QueueUrl": world.queue_url,
        "MaxNumberOfMessages": 10,
        "WaitTimeSeconds": 5,
        "VisibilityTimeout": 0,  # visible again at once: the other path receives it too
        "MessageSystemAttributeNames": ["SentTimestamp"],
        "MessageAttributeNames": ["All"],
    }
    async with lean_clients(world, world.endpoint_url) as c:
        botocore_answer = await c.sqs.receive_message(**params)
        lean_answer = await c.lean_sqs.receive_message(**params)

    def message(answer: Any) -> dict[str, Any]:
        (only,) = answer["Messages"]
        return {k: v for k, v in only.items() if k not in PER_RECEIVE}

    assert message(lean_answer) == message(botocore_answer)
    assert message(lean_answer)["Body"] == "héllo ✓"
    assert message(lean_answer)["MessageAttributes"]["raw"]["BinaryValue"] == (
        b"\x00\xff\x10 not utf-8 \xc3"
    )
    assert metadata_shape(dict(lean_answer)) == metadata_shape(dict(botocore_answer))


async def delete_batch_matches_botocore(world: World, sqs: Any) -> dict[str, Any]:
    """One good and one stale receipt handle: the good one deleted, the stale one failed with
    botocore's fields. Returns the failed entry, for what a backend says of it."""
    sqs.send_message(QueueUrl=world.queue_url, MessageBody="x")
    (received,) = sqs.receive_message(QueueUrl=world.queue_url, WaitTimeSeconds=5)["Messages"]
    entries: list[Any] = [
        {"Id": "0", "ReceiptHandle": received["ReceiptHandle"]},
        {"Id": "1", "ReceiptHandle": "not-a-receipt-handle"},
    ]
    async with lean_clients(world, world.endpoint_url) as c:
        lean = await c.lean_sqs.delete_message_batch(QueueUrl=world.queue_url, Entries=entries)
        botocore = await c.sqs.delete_message_batch(QueueUrl=world.queue_url, Entries=entries[1:])
    assert lean["Successful"] == [{"Id": "0"}]
    assert lean["Failed"] == botocore["Failed"]
    (failed,) = lean["Failed"]
    assert failed["Id"] == "1"
    assert failed["Code"]
    return dict(failed)


async def put_records_land_byte_for_byte(world: World, kinesis: Any) -> None:
    """Every record's bytes (not UTF-8 either) arrive as sent; the answer has botocore's shape."""
    data = [b"\x00\x01\xfe\xff", "ünïcode ✓".encode(), orjson.dumps({"n": 1})]
    records: list[Any] = [{"Data": d, "PartitionKey": f"key-{i}"} for i, d in enumerate(data)]
    async with lean_clients(world, world.endpoint_url) as c:
        lean = await c.lean_kinesis.put_records(StreamName=world.stream_name, Records=records)
        botocore = await c.kinesis.put_records(StreamName=world.stream_name, Records=records[:1])
    assert lean["FailedRecordCount"] == 0
    assert [sorted(r) for r in lean["Records"]] == [["SequenceNumber", "ShardId"]] * 3
    assert sorted(lean) == sorted(botocore)
    stored = await asyncio.to_thread(read_stream, kinesis, world.stream_name)
    assert sorted(r["data"] for r in stored) == sorted([*data, data[0]])


async def errors_are_the_clients_modeled_exceptions(world: World) -> None:
    """A missing queue or stream raises the same class, code and message on both paths."""
    missing_queue = world.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    record: Any = {"Data": b"x", "PartitionKey": "k"}
    async with lean_clients(world, world.endpoint_url) as c:
        lean_sqs = await LeanSqs.create(c.sqs, await get_session().get_credentials(), missing_queue)
        errors: list[ClientError] = []
        for call in (
            lambda: c.sqs.receive_message(QueueUrl=missing_queue, WaitTimeSeconds=0),
            lambda: lean_sqs.receive_message(QueueUrl=missing_queue, WaitTimeSeconds=0),
            lambda: c.kinesis.put_records(StreamName="no-such-stream", Records=[record]),
            lambda: c.lean_kinesis.put_records(StreamName="no-such-stream", Records=[record]),
        ):
            with pytest.raises(ClientError) as raised:
                await call()
            errors.append(raised.value)
    botocore_sqs, lean_sqs_error, botocore_kinesis, lean_kinesis_error = errors
    assert type(lean_sqs_error) is type(botocore_sqs)
    assert type(lean_sqs_error).__name__ == "QueueDoesNotExist"
    assert lean_sqs_error.response["Error"] == botocore_sqs.response["Error"]
    assert type(lean_kinesis_error) is type(botocore_kinesis)
    assert type(lean_kinesis_error).__name__ == "ResourceNotFoundException"
    assert lean_kinesis_error.response["Error"] == botocore_kinesis.response["Error"]


async def dead_letters_arrive_as_botocore_sends_them(world: World, sqs: Any) -> None:
    """The DLQ's SendMessageBatch: the same bodies, String, Number and Binary attributes, MD5s."""
    entries: list[Any] = [
        {
            "Id": str(i),
            "MessageBody": f'{{"kind": "rejected_events", "detail": "ünïcode ✓ {i}"}}',
            "MessageAttributes": {
                "reason": {"DataType": "String", "StringValue": "missing_field"},
                "receive_count": {"DataType": "Number", "StringValue": str(i + 1)},
                "raw": {"DataType": "Binary", "BinaryValue": bytes([i, 0xFF, 0x00])},
            },
        }
        for i in range(3)
    ]
    async with lean_clients(world, world.endpoint_url) as c:
        lean = await LeanDlq.create(c.sqs, await get_session().get_credentials(), world.dlq_url)
        by_lean = await lean.send_message_batch(QueueUrl=world.dlq_url, Entries=entries)
        by_botocore = await c.sqs.send_message_batch(QueueUrl=world.dlq_url, Entries=entries)

    def answered(answer: Any) -> list[tuple[str, str, str]]:
        return [
            (ok["Id"], ok["MD5OfMessageBody"], ok["MD5OfMessageAttributes"])
            for ok in answer["Successful"]
        ]

    assert answered(by_lean) == answered(by_botocore)
    assert by_lean.get("Failed", []) == []

    def letter(body: str, attributes: dict[str, Any]) -> tuple[str, str]:
        return body, repr(sorted((k, sorted(v.items())) for k, v in attributes.items()))

    received: list[tuple[str, str]] = []
    while len(received) < 2 * len(entries):
        page = sqs.receive_message(
            QueueUrl=world.dlq_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=5,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        assert page, f"only {len(received)} letters arrived"
        received += [letter(m["Body"], m["MessageAttributes"]) for m in page]
    sent = [letter(e["MessageBody"], e["MessageAttributes"]) for e in entries]
    assert sorted(received) == sorted(sent * 2)
