"""CPU per call of the daemon's three hot AWS calls, three ways, against a canned local server.

    python -m devworld.bench.calls [--calls N]

The server (a subprocess, so that its CPU is not counted) answers every ReceiveMessage with 10
messages of ~2 KiB, every DeleteMessageBatch with 10 successes and every PutRecords with 500
records accepted. The client is the daemon's (its AioConfig), and each call is timed with the
process's CPU clock:

* botocore: the aiobotocore client as it comes;
* trimmed: the same client without the per-request handlers the daemon has no use for (the
  user agent rebuilt per request, retry-info headers, idempotency tokens, S3's checksum mode,
  Lambda's recursion detection, API-version headers): what botocore's own configuration and
  handler registration allow;
* lean: event_processor.aws.lean, the path the daemon takes (docs/design.md, "The lean request path").
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

# Warm-up calls before timing each (connection set up, caches filled).
_WARM_UP = 20
# How long the client waits for the server to listen.
_SERVER_START_S = 10.0
_MESSAGE_BODY = base64.b64encode(orjson.dumps({"payload": "x" * 1500})).decode()


def _answers() -> dict[str, bytes]:
    messages = [
        {
            "MessageId": str(uuid.uuid4()),
            "ReceiptHandle": "r" * 200,
            "MD5OfBody": "0" * 32,
            "Body": _MESSAGE_BODY,
            "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1764590000000"},
        }
        for _ in range(10)
    ]
    records = [{"SequenceNumber": "4" * 56, "ShardId": "shardId-000000000000"}] * 500
    return {
        "ReceiveMessage": orjson.dumps({"Messages": messages}),
        "DeleteMessageBatch": orjson.dumps({"Successful": [{"Id": str(i)} for i in range(10)]}),
        "PutRecords": orjson.dumps({"FailedRecordCount": 0, "Records": records}),
    }


def serve(port: int) -> None:
    """The canned server: the answer is chosen by the X-Amz-Target operation."""
    from aiohttp import web  # noqa: PLC0415 - only the server process needs it

    answers = _answers()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        return web.Response(
            body=answers[operation],
            content_type="application/x-amz-json-1.0",
            headers={"x-amzn-RequestId": "canned"},
        )

    server = web.Application()
    server.router.add_post("/", handle)
    web.run_app(server, host="127.0.0.1", port=port, print=None, access_log=None)


def trim(client: Any) -> None:
    """Unregister the per-request handlers the daemon has no use for (see the docstring)."""
    from botocore import handlers  # noqa: PLC0415

    events = client.meta.events
    for event, handler in (
        ("before-parameter-build", handlers.generate_idempotent_uuid),
        ("before-parameter-build", handlers._handle_request_validation_mode_member),  # type: ignore[attr-defined]
        ("before-call", handlers.add_recursion_detection_header),
        ("before-call", handlers.inject_api_version_header_if_needed),
        ("request-created", handlers.add_retry_headers),
    ):
        events.unregister(event, handler)
    service_id = client.meta.service_model.service_id.hyphenize()
    user_agent = client._user_agent_creator
    events.unregister(
        f"request-created.{service_id}", user_agent.rebuild_and_replace_user_agent_handler
    )


async def measure(endpoint_url: str, calls: int) -> None:
    from aiobotocore.session import get_session  # noqa: PLC0415

    from event_processor import app  # noqa: PLC0415
    from event_processor.aws.lean import LeanKinesis, LeanSqs  # noqa: PLC0415
    from event_processor.config import Settings  # noqa: PLC0415

    settings = Settings(endpoint_url=endpoint_url)
    queue_url = f"{endpoint_url}/123456789012/submissions"
    records: Any = [
        {
            "Data": orjson.dumps({"event_id": str(uuid.uuid4()), "cmdl": "c" * 120}),
            "PartitionKey": "d",
        }
    ] * 500
    entries: Any = [{"Id": str(i), "ReceiptHandle": "r" * 200} for i in range(10)]
    session = get_session()
    async with (
        app.sqs_client(session, settings) as sqs,
        app.kinesis_client(session, settings) as kinesis,
        app.sqs_client(session, settings) as trimmed_sqs,
        app.kinesis_client(session, settings) as trimmed_kinesis,
    ):
        trim(trimmed_sqs)
        trim(trimmed_kinesis)
        credentials = await session.get_credentials()
        lean_sqs = await LeanSqs.create(sqs, credentials, queue_url)
        lean_kinesis = await LeanKinesis.create(kinesis, credentials, "events")
        ways: dict[str, tuple[Any, Any]] = {
            "botocore": (sqs, kinesis),
            "trimmed": (trimmed_sqs, trimmed_kinesis),
            "lean": (lean_sqs, lean_kinesis),
        }
        operations: dict[str, Callable[[Any, Any], Awaitable[Any]]] = {
            "ReceiveMessage (10 messages)": lambda q, _: q.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=20,
                VisibilityTimeout=30,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                MessageAttributeNames=["All"],
            ),
            "DeleteMessageBatch (10)": lambda q, _: q.delete_message_batch(
                QueueUrl=queue_url, Entries=entries
            ),
            "PutRecords (500 records)": lambda _, k: k.put_records(
                StreamName="events", Records=records
            ),
        }
        print(f"{'µs of CPU per call':<30}" + "".join(f"{way:>10}" for way in ways))
        for name, call in operations.items():
            row = f"{name:<30}"
            for sqs_client, kinesis_client in ways.values():
                for _ in range(_WARM_UP):
                    await call(sqs_client, kinesis_client)
                began = time.process_time()
                for _ in range(calls):
                    await call(sqs_client, kinesis_client)
                row += f"{(time.process_time() - began) / calls * 1e6:>10.0f}"
            print(row, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + _SERVER_START_S
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise SystemExit(f"the canned server did not listen on {port}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="calls", description=__doc__)
    parser.add_argument("--calls", type=int, default=200, help="timed calls per operation and way")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server subprocess
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    port = _free_port()
    server = subprocess.Popen(  # noqa: S603 - this very module
        [sys.executable, "-m", "devworld.bench.calls", "--serve", str(port)]
    )
    try:
        _wait_listening(port)
        # Dummy credentials: the server checks nothing, botocore needs something to sign with.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        asyncio.run(measure(f"http://127.0.0.1:{port}", args.calls))
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
