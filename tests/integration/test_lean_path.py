"""The lean request path against moto and the fault proxy: the same answers, errors and retries
as botocore's own path for ReceiveMessage, DeleteMessageBatch and PutRecords."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiobotocore.session import get_session
from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from devworld.emulator import Emulator, World
from devworld.faultproxy import FaultProxy
from event_processor.aws.lean import LeanCalls, LeanSqs
from tests import lean_checks
from tests.helpers import lean_clients

_RECORD: Any = {"Data": b"x", "PartitionKey": "k"}


# The checks both backends run (tests/lean_checks.py), here against moto.


async def test_receive_matches_botocore_binary_attributes_included(
    emulator: Emulator, world: World
) -> None:
    """ReceiveMessage on the lean path answers what botocore answers, binary attributes included."""
    await lean_checks.receive_matches_botocore(world, emulator.boto3_client("sqs"))


async def test_delete_batch_answers_per_entry_as_botocore_does(
    emulator: Emulator, world: World
) -> None:
    """DeleteMessageBatch on the lean path reports each entry as botocore does."""
    failed = await lean_checks.delete_batch_matches_botocore(world, emulator.boto3_client("sqs"))
    assert failed["SenderFault"] is True  # moto's answer (LocalStack says false)


async def test_put_records_land_byte_for_byte(emulator: Emulator, world: World) -> None:
    """PutRecords on the lean path stores each record's bytes unchanged."""
    await lean_checks.put_records_land_byte_for_byte(world, emulator.boto3_client("kinesis"))


async def test_errors_are_the_clients_modeled_exceptions(world: World) -> None:
    """An error answer on the lean path raises the client's own modeled exception."""
    await lean_checks.errors_are_the_clients_modeled_exceptions(world)


async def test_dead_letters_arrive_as_botocore_sends_them(emulator: Emulator, world: World) -> None:
    """SendMessageBatch on the lean path delivers letters as botocore sends them."""
    await lean_checks.dead_letters_arrive_as_botocore_sends_them(
        world, emulator.boto3_client("sqs")
    )


# What only moto and the fault proxy can show: retries, transports, requests on the wire.


async def test_sqs_server_errors_are_retried_as_botocore_retries_them(
    world: World, proxy: FaultProxy
) -> None:
    """Standard mode, 3 attempts: a receive that keeps failing is sent 3 times, then raises."""
    proxy.configure(fail_operations=frozenset({"ReceiveMessage"}))
    async with lean_clients(world, proxy.endpoint_url) as c:
        for receive in (c.sqs.receive_message, c.lean_sqs.receive_message):
            before = proxy.calls("ReceiveMessage")
            with pytest.raises(ClientError) as raised:
                await receive(QueueUrl=world.queue_url, WaitTimeSeconds=0)
            assert proxy.calls("ReceiveMessage") - before == 3
            assert raised.value.response["Error"]["Code"] == "InternalError"
            assert raised.value.response["ResponseMetadata"]["RetryAttempts"] == 2


async def test_a_retried_call_that_then_succeeds_returns_its_answer(world: World) -> None:
    """A 500 then a success: the caller sees the success, with one retry counted."""
    failure = Answer(
        500,
        orjson.dumps({"__type": "InternalError", "message": "try again"}),
        {"x-amzn-query-error": "InternalError;Receiver"},
    )
    success = Answer(200, orjson.dumps({"Successful": [{"Id": "0"}], "Failed": []}))
    entries: list[Any] = [{"Id": "0", "ReceiptHandle": "handle"}]
    async with recording_server(failure, success) as (url, seen), lean_clients(world, url) as c:
        answer = await c.lean_sqs.delete_message_batch(QueueUrl=world.queue_url, Entries=entries)
    assert len(seen) == 2
    assert answer["Successful"] == [{"Id": "0"}]
    assert answer["ResponseMetadata"]["RetryAttempts"] == 1


async def test_kinesis_calls_get_the_one_attempt_they_are_configured_with(
    world: World, proxy: FaultProxy
) -> None:
    """A throttled PutRecords is not resent by the client: the sink owns resends."""
    proxy.configure(throttle_rate=1.0)
    async with lean_clients(world, proxy.endpoint_url) as c:
        with pytest.raises(ClientError) as raised:
            await c.lean_kinesis.put_records(StreamName=world.stream_name, Records=[_RECORD])
    assert proxy.calls("PutRecords") == 1
    assert type(raised.value).__name__ == "ProvisionedThroughputExceededException"


async def test_a_dropped_connection_raises_botocores_own_exception(
    world: World, proxy: FaultProxy
) -> None:
    """SQS dropping connections: retried, then the same botocore exception as its own path."""
    proxy.configure(sqs_down=True, down_mode="reset")
    async with lean_clients(world, proxy.endpoint_url) as c:
        raised: list[type[BaseException]] = []
        for receive in (c.sqs.receive_message, c.lean_sqs.receive_message):
            before = proxy.calls("ReceiveMessage")
            with pytest.raises(BotoCoreError) as error:
                await receive(QueueUrl=world.queue_url, WaitTimeSeconds=0)
            raised.append(type(error.value))
            assert proxy.calls("ReceiveMessage") - before == 3
    assert raised[0] is raised[1]


class CountingCredentials:
    """Credentials that count how often they are asked for (a refresh would happen there)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.asked = 0

    async def get_frozen_credentials(self) -> Any:
        self.asked += 1
        return await self.inner.get_frozen_credentials()


async def test_credentials_are_asked_for_at_every_call(world: World) -> None:
    """Every call signs with what the credentials say now, so refreshed roles are used."""
    async with lean_clients(world, world.endpoint_url) as c:
        credentials = CountingCredentials(await get_session().get_credentials())
        lean = await LeanSqs.create(c.sqs, credentials, world.queue_url)  # type: ignore[arg-type]
        for _ in range(3):
            await lean.receive_message(QueueUrl=world.queue_url, WaitTimeSeconds=0)
    assert credentials.asked == 3


async def test_without_credentials_nothing_is_sent(world: World, proxy: FaultProxy) -> None:
    """No credentials: botocore's NoCredentialsError, and no request leaves."""
    async with lean_clients(world, proxy.endpoint_url) as c:
        lean = await LeanSqs.create(c.sqs, None, world.queue_url)
        with pytest.raises(NoCredentialsError):
            await lean.receive_message(QueueUrl=world.queue_url, WaitTimeSeconds=0)
    assert proxy.calls("ReceiveMessage") == 0


async def test_an_operation_the_path_cannot_encode_stays_on_botocores(world: World) -> None:
    """GetShardIterator takes a timestamp: it is left to the client, the hot calls are not."""
    async with lean_clients(world, world.endpoint_url) as c:
        lean = await LeanCalls.create(
            c.kinesis,
            None,
            {"GetShardIterator": {"StreamName": world.stream_name}, "PutRecords": {}},
        )
    assert "GetShardIterator" not in lean
    assert "PutRecords" in lean


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@asynccontextmanager
async def recording_server(*answers: Answer) -> AsyncIterator[tuple[str, list[web.Request]]]:
    """An HTTP server in this loop that records each request and gives the answers in turn
    (the last one from then on)."""
    seen: list[web.Request] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        headers = {"x-amzn-RequestId": f"r-{len(seen)}", **answer.headers}
        return web.Response(status=answer.status, body=answer.body, headers=headers)

    server = web.Application()
    server.router.add_post("/", handle)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_the_request_on_the_wire_is_botocores(world: World) -> None:
    """Same method, path, target, content type, signed headers, scope and JSON body."""
    records: list[Any] = [{"Data": b"\x00\xffdata", "PartitionKey": "device-1"}]
    answer = Answer(
        200,
        orjson.dumps(
            {"FailedRecordCount": 0, "Records": [{"SequenceNumber": "1", "ShardId": "s"}]}
        ),
    )
    async with recording_server(answer) as (url, seen), lean_clients(world, url) as c:
        await c.kinesis.put_records(StreamName=world.stream_name, Records=records)
        await c.lean_kinesis.put_records(StreamName=world.stream_name, Records=records)
    botocore, lean = seen
    assert (lean.method, lean.path) == (botocore.method, botocore.path)
    for header in ("X-Amz-Target", "Content-Type", "Host"):
        assert lean.headers[header] == botocore.headers[header]
    assert len(lean.headers.getall("Host")) == 1  # the lean path's own, not the session's too

    def scope(request: web.Request) -> tuple[str, str]:
        # "AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/SERVICE/aws4_request, SignedHeaders=..."
        credential, signed, _ = request.headers["Authorization"].split(", ")
        return credential.split("/", 2)[2], signed

    assert scope(lean) == scope(botocore)
    assert scope(lean)[0] == f"{world.region}/kinesis/aws4_request"
    lean_body = orjson.loads(await lean.read())
    assert lean_body == orjson.loads(await botocore.read())
    assert base64.b64decode(lean_body["Records"][0]["Data"]) == b"\x00\xffdata"


async def test_an_answer_that_is_not_json_reads_as_botocore_reads_it(world: World) -> None:
    """A 200 whose body is not JSON (a proxy's page): botocore's reading of it, not a crash."""
    page = Answer(200, b"<html>not json</html>")
    entries: list[Any] = [{"Id": "0", "ReceiptHandle": "handle"}]
    async with recording_server(page) as (url, _), lean_clients(world, url) as c:
        botocore = await c.sqs.delete_message_batch(QueueUrl=world.queue_url, Entries=entries)
        lean = await c.lean_sqs.delete_message_batch(QueueUrl=world.queue_url, Entries=entries)
    assert {k: v for k, v in lean.items() if k != "ResponseMetadata"} == {
        k: v for k, v in botocore.items() if k != "ResponseMetadata"
    }
    assert lean_checks.metadata_shape(dict(lean)) == lean_checks.metadata_shape(dict(botocore))
