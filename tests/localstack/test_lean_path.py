"""The lean request path against the real LocalStack: every hot call takes it, and it answers
as botocore's own path answers (tests/integration/test_awsjson.py holds it to moto)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from devworld.emulator import World, read_stream
from event_processor.awsjson import LeanCalls, LeanDlq, LeanSqs
from tests.helpers import lean_clients
from tests.localstack.support import LocalStack

pytestmark = pytest.mark.localstack

# What differs between two receives of one message.
_PER_RECEIVE = ("ReceiptHandle",)


async def test_every_hot_call_takes_the_lean_path(fresh_world: World) -> None:
    """LocalStack's service models are botocore's: nothing falls back to the client."""
    world = fresh_world
    async with lean_clients(world, world.endpoint_url) as c:
        credentials = await get_session().get_credentials()
        sqs_calls = await LeanCalls.create(
            c.sqs,
            credentials,
            {
                "ReceiveMessage": {"QueueUrl": world.queue_url},
                "DeleteMessageBatch": {"QueueUrl": world.queue_url},
                "SendMessageBatch": {"QueueUrl": world.dlq_url},
            },
        )
        kinesis_calls = await LeanCalls.create(
            c.kinesis, credentials, {"PutRecords": {"StreamName": world.stream_name}}
        )
    assert sorted(sqs_calls.operations) == [
        "DeleteMessageBatch",
        "ReceiveMessage",
        "SendMessageBatch",
    ]
    assert list(kinesis_calls.operations) == ["PutRecords"]


async def test_receive_and_delete_answer_as_botocore_does(
    localstack: LocalStack, fresh_world: World
) -> None:
    """A message with String and Binary attributes reads the same on both paths; a batch
    delete with one stale receipt handle fails that entry alone, with botocore's fields."""
    world = fresh_world
    localstack.client("sqs").send_message(
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
        (received,) = lean_answer["Messages"]
        entries: list[Any] = [
            {"Id": "0", "ReceiptHandle": received["ReceiptHandle"]},
            {"Id": "1", "ReceiptHandle": "not-a-receipt-handle"},
        ]
        lean_delete = await c.lean_sqs.delete_message_batch(
            QueueUrl=world.queue_url, Entries=entries
        )
        botocore_delete = await c.sqs.delete_message_batch(
            QueueUrl=world.queue_url, Entries=entries[1:]
        )

    def message(answer: Any) -> dict[str, Any]:
        (only,) = answer["Messages"]
        return {k: v for k, v in only.items() if k not in _PER_RECEIVE}

    assert message(lean_answer) == message(botocore_answer)
    assert message(lean_answer)["Body"] == "héllo ✓"
    assert message(lean_answer)["MessageAttributes"]["raw"]["BinaryValue"] == (
        b"\x00\xff\x10 not utf-8 \xc3"
    )
    assert lean_delete["Successful"] == [{"Id": "0"}]
    assert lean_delete["Failed"] == botocore_delete["Failed"]
    # LocalStack says SenderFault false here, where moto says true: both paths say LocalStack's.
    assert lean_delete["Failed"][0]["Id"] == "1"
    assert lean_delete["Failed"][0]["Code"]


async def test_put_records_land_byte_for_byte(localstack: LocalStack, fresh_world: World) -> None:
    """Every record's bytes (not UTF-8 either) reach kinesis-mock as sent."""
    world = fresh_world
    data = [b"\x00\x01\xfe\xff", "ünïcode ✓".encode(), orjson.dumps({"n": 1})]
    records: list[Any] = [{"Data": d, "PartitionKey": f"key-{i}"} for i, d in enumerate(data)]
    async with lean_clients(world, world.endpoint_url) as c:
        lean = await c.lean_kinesis.put_records(StreamName=world.stream_name, Records=records)
        botocore = await c.kinesis.put_records(StreamName=world.stream_name, Records=records[:1])
    assert lean["FailedRecordCount"] == 0
    assert [sorted(r) for r in lean["Records"]] == [["SequenceNumber", "ShardId"]] * 3
    assert sorted(lean) == sorted(botocore)
    stored = await asyncio.to_thread(read_stream, localstack.client("kinesis"), world.stream_name)
    assert sorted(r["data"] for r in stored) == sorted([*data, data[0]])


async def test_errors_are_the_clients_modeled_exceptions(fresh_world: World) -> None:
    """A missing queue or stream raises the same class and error on both paths."""
    world = fresh_world
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


async def test_dead_letters_arrive_as_botocore_sends_them(
    localstack: LocalStack, fresh_world: World
) -> None:
    """SendMessageBatch: bodies and attributes arrive in the DLQ as the client's would."""
    world = fresh_world
    attributes: Any = {
        "reason": {"DataType": "String", "StringValue": "invalid_body ✓"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
    }
    entries: list[Any] = [
        {"Id": str(i), "MessageBody": f"letter {i} ✓", "MessageAttributes": attributes}
        for i in range(3)
    ]
    async with lean_clients(world, world.endpoint_url) as c:
        dlq = await LeanDlq.create(c.sqs, await get_session().get_credentials(), world.dlq_url)
        lean = await dlq.send_message_batch(QueueUrl=world.dlq_url, Entries=entries)
        botocore = await c.sqs.send_message_batch(QueueUrl=world.dlq_url, Entries=entries[:1])
    assert sorted(e["Id"] for e in lean["Successful"]) == ["0", "1", "2"]
    assert sorted(lean["Successful"][0]) == sorted(botocore["Successful"][0])
    sqs = localstack.client("sqs")
    seen: list[Any] = []
    while len(seen) < 4:
        got = sqs.receive_message(
            QueueUrl=world.dlq_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=5,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        assert got, f"only {len(seen)} of 4 letters arrived"
        seen += got
    assert sorted(m["Body"] for m in seen) == sorted(
        ["letter 0 ✓", "letter 1 ✓", "letter 2 ✓", "letter 0 ✓"]
    )
    for received in seen:
        assert received["MessageAttributes"]["reason"]["StringValue"] == "invalid_body ✓"
        assert received["MessageAttributes"]["blob"]["BinaryValue"] == b"\x00\xff"
