"""The lean request path against the real LocalStack: every hot call takes it, and it answers
as botocore's own path answers (the checks of tests/lean_checks.py, which moto runs too)."""

from __future__ import annotations

import pytest
from aiobotocore.session import get_session

from devworld.emulator import World
from event_processor.aws.lean import LeanCalls
from tests import lean_checks
from tests.helpers import lean_clients
from tests.localstack.support import LocalStack

pytestmark = pytest.mark.localstack


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


async def test_receive_matches_botocore(localstack: LocalStack, fresh_world: World) -> None:
    """ReceiveMessage on the lean path answers what botocore answers."""
    await lean_checks.receive_matches_botocore(fresh_world, localstack.client("sqs"))


async def test_delete_batch_answers_per_entry_as_botocore_does(
    localstack: LocalStack, fresh_world: World
) -> None:
    """DeleteMessageBatch on the lean path reports each entry as botocore does."""
    failed = await lean_checks.delete_batch_matches_botocore(fresh_world, localstack.client("sqs"))
    assert failed["SenderFault"] is False  # LocalStack's answer (moto says true)


async def test_put_records_land_byte_for_byte(localstack: LocalStack, fresh_world: World) -> None:
    """PutRecords on the lean path stores each record's bytes unchanged."""
    await lean_checks.put_records_land_byte_for_byte(fresh_world, localstack.client("kinesis"))


async def test_errors_are_the_clients_modeled_exceptions(fresh_world: World) -> None:
    """An error answer on the lean path raises the client's own modeled exception."""
    await lean_checks.errors_are_the_clients_modeled_exceptions(fresh_world)


async def test_dead_letters_arrive_as_botocore_sends_them(
    localstack: LocalStack, fresh_world: World
) -> None:
    """SendMessageBatch on the lean path delivers letters as botocore sends them."""
    await lean_checks.dead_letters_arrive_as_botocore_sends_them(
        fresh_world, localstack.client("sqs")
    )
