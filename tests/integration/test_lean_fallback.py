"""The lean request path without the private parts of aiobotocore and botocore it reads: each
operation falls back to the client's own path, says so once (log line and metric), and works
against the emulator. A release the pin lets in costs speed, never service (issue 21)."""

from __future__ import annotations

import asyncio
import logging
import random
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiobotocore.endpoint
import aiobotocore.httpsession
import botocore.auth
import botocore.awsrequest
import botocore.hooks
import botocore.serialize
import pytest
from aiobotocore.session import get_session
from prometheus_client import CollectorRegistry, Gauge

from devworld.emulator import Emulator, World, read_stream
from devworld.faultproxy import FaultProxy
from devworld.verify import expected_sequences
from event_processor import app
from event_processor.aws import lean as lean_module
from event_processor.aws.lean import LeanDlq, LeanKinesis, LeanSqs
from event_processor.metrics import Metrics
from tests.conftest import settings_for
from tests.factories import encode, fleet_like, submission
from tests.helpers import (
    check_order,
    drain_queue,
    eventually,
    queue_depth,
    send_bodies,
    stream_records,
)
from tests.helpers import client as boto3_client

# Every call the daemon may send on the lean path.
OPERATIONS = ("ReceiveMessage", "DeleteMessageBatch", "SendMessageBatch", "PutRecords")
FALLBACK = "lean_path_unavailable"


@dataclass
class Clients:
    """The daemon's SQS and Kinesis clients, and what each sent by its own path."""

    sqs: Any
    kinesis: Any
    by_client: list[str] = field(default_factory=list)


@asynccontextmanager
async def daemon_clients(world: World, endpoint_url: str) -> AsyncIterator[Clients]:
    """The daemon's two clients (its configurations) through `endpoint_url`; `by_client` lists
    the operations they send themselves (botocore's before-call, which the lean path skips)."""
    settings = settings_for(world, endpoint_url=endpoint_url)
    session = get_session()
    async with (
        app.sqs_client(session, settings) as sqs,
        app.kinesis_client(session, settings) as kinesis,
    ):
        clients = Clients(sqs, kinesis)

        def seen(model: Any, **_: Any) -> None:
            clients.by_client.append(model.name)

        for c in (sqs, kinesis):
            c.meta.events.register("before-call", seen)
        yield clients


@dataclass
class Lean:
    sqs: LeanSqs
    dlq: LeanDlq
    kinesis: LeanKinesis


async def lean_in_front(c: Clients, world: World, gauge: Gauge) -> Lean:
    """What `app.run` builds in front of the clients, with its gauge."""
    credentials = await get_session().get_credentials()
    return Lean(
        await LeanSqs.create(c.sqs, credentials, world.queue_url, gauge),
        await LeanDlq.create(c.sqs, credentials, world.dlq_url, gauge),
        await LeanKinesis.create(c.kinesis, credentials, world.stream_name, gauge),
    )


def on_lean_path(registry: CollectorRegistry) -> dict[str, float | None]:
    """event_processor_lean_path by operation (None: never set)."""
    return {
        op: registry.get_sample_value("event_processor_lean_path", {"operation": op})
        for op in OPERATIONS
    }


def fallbacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The lean_path_unavailable lines logged so far."""
    return [r for r in caplog.records if getattr(r, "action", None) == FALLBACK]


async def every_call_works(lean: Lean, world: World, emulator: Emulator) -> None:
    """A message received and deleted, a letter sent, a record published, as the daemon calls."""
    sqs = boto3_client(emulator, "sqs")
    await asyncio.to_thread(sqs.send_message, QueueUrl=world.queue_url, MessageBody="hello")
    received = await lean.sqs.receive_message(QueueUrl=world.queue_url, WaitTimeSeconds=5)
    (message,) = received["Messages"]
    assert message["Body"] == "hello"
    deleted = await lean.sqs.delete_message_batch(
        QueueUrl=world.queue_url,
        Entries=[{"Id": "0", "ReceiptHandle": message["ReceiptHandle"]}],
    )
    assert deleted["Successful"] == [{"Id": "0"}]
    letters = await lean.dlq.send_message_batch(
        QueueUrl=world.dlq_url, Entries=[{"Id": "0", "MessageBody": "letter"}]
    )
    assert [ok["Id"] for ok in letters["Successful"]] == ["0"]
    published = await lean.kinesis.put_records(
        StreamName=world.stream_name, Records=[{"Data": b"record", "PartitionKey": "k"}]
    )
    assert published["FailedRecordCount"] == 0
    assert await asyncio.to_thread(queue_depth, emulator, world.queue_url) == 0
    dlq = await asyncio.to_thread(drain_queue, emulator, world.dlq_url)
    assert [m["Body"] for m in dlq] == ["letter"]


def the_client(c: Clients) -> list[Any]:
    return [c.sqs, c.kinesis]


def their_endpoints(c: Clients) -> list[Any]:
    return [c.sqs._endpoint, c.kinesis._endpoint]


def module(m: types.ModuleType) -> Callable[[Clients], list[Any]]:
    return lambda _: [m]


def remove(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
    """Take `name` away from `owner`: from the object itself and from every class it would be
    found on, as a release that renamed it would leave things."""
    for place in (owner, *type(owner).__mro__):
        if name in vars(place):
            monkeypatch.delattr(place, name)
    assert not hasattr(owner, name), name


# Every private or undocumented part lean_module._Internals reads, where it lives.
PRIVATE_PARTS = [
    pytest.param(the_client, "_endpoint", id="client._endpoint"),
    pytest.param(their_endpoints, "http_session", id="endpoint.http_session"),
    pytest.param(
        their_endpoints, "_response_parser_factory", id="endpoint._response_parser_factory"
    ),
    pytest.param(the_client, "_resolve_endpoint_ruleset", id="client._resolve_endpoint_ruleset"),
    pytest.param(the_client, "_user_agent_creator", id="client._user_agent_creator"),
    pytest.param(module(botocore.auth), "_host_from_url", id="botocore.auth._host_from_url"),
    pytest.param(module(botocore.serialize), "create_serializer", id="create_serializer"),
    pytest.param(module(botocore.awsrequest), "prepare_request_dict", id="prepare_request_dict"),
    pytest.param(
        module(aiobotocore.endpoint), "convert_to_response_dict", id="convert_to_response_dict"
    ),
    pytest.param(module(botocore.hooks), "first_non_none_response", id="first_non_none_response"),
]


@pytest.mark.parametrize(("owners", "name"), PRIVATE_PARTS)
async def test_a_missing_private_part_sends_every_operation_by_the_client(
    emulator: Emulator,
    world: World,
    caplog: pytest.LogCaptureFixture,
    owners: Callable[[Clients], list[Any]],
    name: str,
) -> None:
    """Each private part gone at start-up: all four operations fall back, said once each, and
    work through the client."""
    registry = CollectorRegistry()
    gauge = Metrics(registry, memory_limit_bytes=None).lean_path
    async with daemon_clients(world, world.endpoint_url) as c:
        # Gone while the lean path is prepared; back for the calls, since the client's own
        # path needs most of them too (a release that renames one renames its own uses).
        with pytest.MonkeyPatch.context() as monkeypatch:
            for owner in owners(c):
                remove(monkeypatch, owner, name)
            lean = await lean_in_front(c, world, gauge)
        assert on_lean_path(registry) == dict.fromkeys(OPERATIONS, 0.0)
        lines = fallbacks(caplog)
        assert sorted(r.operation for r in lines) == sorted(OPERATIONS)  # type: ignore[attr-defined]
        for line in lines:
            assert line.levelno == logging.WARNING
            assert line.stage == "start-up"  # type: ignore[attr-defined]
            assert name in line.reason  # type: ignore[attr-defined]
        await every_call_works(lean, world, emulator)
    assert sorted(c.by_client) == sorted(OPERATIONS)
    assert len(fallbacks(caplog)) == len(OPERATIONS)  # no line per call


async def test_with_every_part_in_place_no_operation_falls_back(
    emulator: Emulator, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The control: the same calls all go by the lean path, the gauge says 1 for each (a bump
    that moved a private part fails here, not silently slower)."""
    registry = CollectorRegistry()
    gauge = Metrics(registry, memory_limit_bytes=None).lean_path
    async with daemon_clients(world, world.endpoint_url) as c:
        lean = await lean_in_front(c, world, gauge)
        await every_call_works(lean, world, emulator)
    assert on_lean_path(registry) == dict.fromkeys(OPERATIONS, 1.0)
    assert c.by_client == []
    assert fallbacks(caplog) == []


async def test_a_private_part_that_changed_fails_preparing_not_the_start(
    emulator: Emulator, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """An endpoint resolver that answers in another form (here: not awaitable): the operations
    fall back at start-up, the reason logged."""
    registry = CollectorRegistry()
    gauge = Metrics(registry, memory_limit_bytes=None).lean_path

    def resolver(*_: Any) -> tuple[str, dict[str, str], None]:
        return world.endpoint_url, {}, None

    async with daemon_clients(world, world.endpoint_url) as c:
        with pytest.MonkeyPatch.context() as monkeypatch:
            for owner in the_client(c):
                monkeypatch.setattr(owner, "_resolve_endpoint_ruleset", resolver)
            lean = await lean_in_front(c, world, gauge)
        await every_call_works(lean, world, emulator)
    assert on_lean_path(registry) == dict.fromkeys(OPERATIONS, 0.0)
    (first, *_) = fallbacks(caplog)
    assert first.reason.startswith("TypeError: ")  # type: ignore[attr-defined]
    assert sorted(c.by_client) == sorted(OPERATIONS)


class ChangedSigner:
    """A SigV4Auth whose constructor changed: the lean path breaks before anything is sent."""

    def __init__(self, credentials: Any) -> None:
        self.credentials = credentials


async def test_a_call_that_breaks_before_sending_goes_by_the_client_once_sent(
    emulator: Emulator, world: World, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """A TypeError inside the lean path at a call: the call is sent once, by the client; the
    next calls too; one log line, the gauge at 0."""
    registry = CollectorRegistry()
    gauge = Metrics(registry, memory_limit_bytes=None).lean_path
    sqs = boto3_client(emulator, "sqs")
    await asyncio.to_thread(sqs.send_message, QueueUrl=world.queue_url, MessageBody="hello")
    async with daemon_clients(world, proxy.endpoint_url) as c:
        lean = await lean_in_front(c, world, gauge)
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setattr(lean_module, "SigV4Auth", ChangedSigner)
            received = await lean.sqs.receive_message(QueueUrl=world.queue_url, WaitTimeSeconds=5)
            again = await lean.sqs.receive_message(QueueUrl=world.queue_url, WaitTimeSeconds=0)
    assert [m["Body"] for m in received["Messages"]] == ["hello"]
    assert again.get("Messages", []) == []
    assert proxy.calls("ReceiveMessage") == 2  # one per call: the broken attempt sent nothing
    assert c.by_client == ["ReceiveMessage", "ReceiveMessage"]
    (line,) = fallbacks(caplog)
    assert (line.operation, line.stage) == ("ReceiveMessage", "before sending")  # type: ignore[attr-defined]
    assert line.reason.startswith("TypeError: ")  # type: ignore[attr-defined]
    assert (
        registry.get_sample_value("event_processor_lean_path", {"operation": "ReceiveMessage"})
        == 0.0
    )
    assert (
        registry.get_sample_value("event_processor_lean_path", {"operation": "DeleteMessageBatch"})
        == 1.0
    )


class RenamedContent:
    """An HTTP response whose `content` moved: what the lean path reads after sending."""

    def __init__(self, response: Any) -> None:
        self.status_code = response.status_code
        self.headers = response.headers
        self.renamed = response  # its `content` is no longer where it was


async def test_a_call_that_breaks_after_sending_is_sent_again_by_the_client(
    emulator: Emulator, world: World, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer of the lean attempt unreadable (an AttributeError): PutRecords is sent again by
    the client, so its record lands twice, as after a time-out; said once, stage and all."""
    registry = CollectorRegistry()
    gauge = Metrics(registry, memory_limit_bytes=None).lean_path
    send = aiobotocore.httpsession.AIOHTTPSession.send
    changed: list[Any] = []

    async def send_once_changed(self: Any, request: Any) -> Any:
        response = await send(self, request)
        if changed:
            return response
        changed.append(request)
        return RenamedContent(response)

    async with daemon_clients(world, proxy.endpoint_url) as c:
        lean = await lean_in_front(c, world, gauge)
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setattr(aiobotocore.httpsession.AIOHTTPSession, "send", send_once_changed)
            published = await lean.kinesis.put_records(
                StreamName=world.stream_name, Records=[{"Data": b"once", "PartitionKey": "k"}]
            )
    assert published["FailedRecordCount"] == 0
    assert proxy.calls("PutRecords") == 2
    assert c.by_client == ["PutRecords"]
    (line,) = fallbacks(caplog)
    assert (line.operation, line.stage) == ("PutRecords", "after sending")  # type: ignore[attr-defined]
    assert "content" in line.reason  # type: ignore[attr-defined]
    assert (
        registry.get_sample_value("event_processor_lean_path", {"operation": "PutRecords"}) == 0.0
    )
    stored = await asyncio.to_thread(
        read_stream, boto3_client(emulator, "kinesis"), world.stream_name
    )
    assert [r["data"] for r in stored] == [b"once", b"once"]


async def test_the_daemon_starts_and_delivers_without_a_private_part(
    emulator: Emulator,
    world: World,
    daemon: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """botocore.awsrequest.prepare_request_dict gone for the whole run: the daemon starts with
    every hot call on the client's path, publishes in order and sends the rejection."""
    remove(monkeypatch, botocore.awsrequest, "prepare_request_dict")
    rng = random.Random(21)
    bodies = [encode(fleet_like(rng)) for _ in range(5)]
    broken = encode(submission(events={"new_process": [{"user": "no cmdl"}]}))
    expected = expected_sequences(bodies)
    running = await daemon(settings_for(world))
    for op in OPERATIONS:
        assert running.metric("event_processor_lean_path", {"operation": op}) == 0.0
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, [*bodies, broken])
    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
        timeout_s=30,
    )
    assert await running.stop() == 0
    records = await asyncio.to_thread(stream_records, emulator, world)
    assert check_order(records) == expected
    letters = await asyncio.to_thread(drain_queue, emulator, world.dlq_url)
    assert len(letters) == 1
