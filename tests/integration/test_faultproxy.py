"""The fault proxy's own promises: a fault schedule its seed fixes, and a lost connection to
the emulator dropped for the client too."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from devworld import faultproxy
from devworld.emulator import Emulator, World, read_stream
from devworld.faultproxy import FaultProxy
from tests.helpers import LeanClients, client, lean_clients

_CALLS = 30
_SEED = 7


async def _throttled_calls(world: World, proxy: FaultProxy, sqs_calls_between: int) -> list[int]:
    """Which of `_CALLS` PutRecords calls were throttled, with failed entries and
    `sqs_calls_between` times 0, 1 or 2 SQS calls drawing from the proxy in between."""
    proxy.configure(throttle_rate=0.1, sqs_error_rate=0.1, put_records_entry_failure_rate=0.5)
    throttled: list[int] = []
    c: LeanClients
    async with lean_clients(world, proxy.endpoint_url) as c:
        for call in range(_CALLS):
            for _ in range(sqs_calls_between * (call % 3)):
                # An injected 500 after its retries is fine: it drew, which is the point.
                with contextlib.suppress(ClientError):
                    await c.lean_sqs.receive_message(QueueUrl=world.queue_url, WaitTimeSeconds=0)
            records: list[Any] = [{"Data": b"x", "PartitionKey": str(i)} for i in range(call + 1)]
            try:
                await c.lean_kinesis.put_records(StreamName=world.stream_name, Records=records)
            except ClientError:
                throttled.append(call)
    assert proxy.injected(faultproxy.THROTTLE) == len(throttled)
    return throttled


async def test_the_nth_kinesis_call_meets_the_same_fate_whatever_the_sqs_calls_between(
    emulator: Emulator, world: World
) -> None:
    """A shared stream let interleaving decide: one CI run saw no throttle in 30 calls at 10%."""
    with FaultProxy(emulator.endpoint_url, seed=_SEED) as proxy:
        alone = await _throttled_calls(world, proxy, sqs_calls_between=0)
    with FaultProxy(emulator.endpoint_url, seed=_SEED) as twin:
        interleaved = await _throttled_calls(world, twin, sqs_calls_between=1)
        assert twin.injected(faultproxy.SQS_ERROR) > 0
        assert twin.injected(faultproxy.ENTRY_FAILURE) > 0
    assert alone == interleaved
    assert alone, "the seed's schedule throttles some of the first 30 calls"


def test_a_connection_the_emulator_drops_is_dropped_for_the_client_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not a 500 the emulator never sent, nor a traceback in the log: the path is gone."""
    upstream = socket.create_server(("127.0.0.1", 0))
    port = upstream.getsockname()[1]

    def drop_every_connection() -> None:
        with contextlib.suppress(OSError):  # the listening socket closed: the test is over
            while True:
                connection, _ = upstream.accept()
                connection.recv(65536)
                connection.close()

    threading.Thread(target=drop_every_connection, daemon=True).start()
    with caplog.at_level(logging.ERROR), FaultProxy(f"http://127.0.0.1:{port}") as proxy:
        sqs = boto3.client(
            "sqs",
            endpoint_url=proxy.endpoint_url,
            region_name="eu-west-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - a dummy
            config=Config(retries={"total_max_attempts": 1}),
        )
        with pytest.raises(ConnectionClosedError):
            sqs.receive_message(QueueUrl=f"http://127.0.0.1:{port}/123456789012/q")
        assert proxy.dropped("ReceiveMessage") == 1
    upstream.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_queue_down_answers_503_while_the_other_queues_answer(
    emulator: Emulator, world: World, proxy: FaultProxy
) -> None:
    """`queues_down` fails the calls naming the DLQ, not those naming the source queue."""
    proxy.configure(queues_down=frozenset({world.dlq_url}))
    sqs = boto3.client(
        "sqs",
        endpoint_url=proxy.endpoint_url,
        region_name=world.region,
        config=Config(retries={"total_max_attempts": 1}),
    )
    entries = [{"Id": "0", "MessageBody": "letter"}]
    with pytest.raises(ClientError) as failed:
        sqs.send_message_batch(QueueUrl=world.dlq_url, Entries=entries)
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert failed.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert sqs.send_message_batch(QueueUrl=world.queue_url, Entries=entries)["Successful"]
    assert proxy.injected(faultproxy.QUEUE_DOWN) == 1
    proxy.configure(queues_down=frozenset())
    assert sqs.send_message_batch(QueueUrl=world.dlq_url, Entries=entries)["Successful"]


async def test_rewritten_answers_leave_the_stored_records_as_they_came(
    emulator: Emulator, world: World, proxy: FaultProxy
) -> None:
    """sequence_inversions answers a key's second record one below its first, shard_moves
    a later key's records from a shard of their own; the stream holds what was sent."""
    c: LeanClients
    async with lean_clients(world, proxy.endpoint_url) as c:

        async def put(key: str) -> tuple[str, str]:
            answer = await c.lean_kinesis.put_records(
                StreamName=world.stream_name, Records=[{"Data": b"x", "PartitionKey": key}]
            )
            [result] = answer["Records"]
            return str(result["ShardId"]), str(result["SequenceNumber"])

        proxy.configure(sequence_inversions=1)
        first, second, third = await put("a"), await put("a"), await put("a")
        assert second == (first[0], str(int(first[1]) - 1))
        assert int(third[1]) > int(first[1]), "one inversion, then the emulator's numbers"
        assert proxy.faults.sequence_inversions == 0

        proxy.configure(shard_moves=1)
        before, moved, still = await put("b"), await put("b"), await put("b")
        assert moved[0] == still[0] == "shardId-000000001000" != before[0]
        assert proxy.injected(faultproxy.SHARD_MOVED) == 1
        proxy.clear()
        assert (await put("b"))[0] == before[0], "clear() puts the key back on its shard"
    stored = read_stream(client(emulator, "kinesis"), world.stream_name)
    assert sorted(r["partition_key"] for r in stored) == ["a"] * 3 + ["b"] * 4
