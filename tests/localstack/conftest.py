"""The LocalStack tier's fixtures: the running LocalStack (fail, never skip, without one), the
world its init hook created, and fresh worlds for tests that need their own stream."""

from __future__ import annotations

import urllib.error
import uuid
from collections.abc import Iterator

import pytest

from devworld.emulator import World, create_world, delete_world
from devworld.localstack_host import compose_service
from tests.localstack.support import LocalStack, endpoint_url, http_json

START_HINT = (
    "start it with `make test-localstack` (the whole tier), or "
    "`.venv/bin/python -m devworld.localstack_host start` and then pytest tests/localstack"
)


@pytest.fixture(scope="session")
def localstack() -> LocalStack:
    """The LocalStack the tier started; a test fails (not skips) when it is not there and healthy."""
    url = endpoint_url()
    try:
        health = http_json(f"{url}/_localstack/health")
        init = http_json(f"{url}/_localstack/init/ready")
    except (urllib.error.URLError, OSError) as exc:
        pytest.fail(f"LocalStack is not reachable at {url} ({exc}): {START_HINT}")
    services = health.get("services", {})
    for name in ("sqs", "kinesis", "secretsmanager"):
        if services.get(name) not in {"running", "available"}:
            pytest.fail(f"LocalStack at {url} has {name} {services.get(name)!r}: {START_HINT}")
    if not init.get("completed"):
        pytest.fail(f"LocalStack at {url}: its ready.d hooks have not finished: {init}")
    return LocalStack(url, compose_service("localstack")["environment"]["AWS_REGION"])


@pytest.fixture(scope="session")
def compose_world(localstack: LocalStack) -> World:
    """The queue, DLQ and stream that localstack/ready.d/init-aws.sh created, by compose's names."""
    env = localstack.compose_env("localstack")
    sqs = localstack.client("sqs")
    return World(
        endpoint_url=localstack.endpoint_url,
        region=localstack.region,
        queue_url=sqs.get_queue_url(QueueName=env["QUEUE_NAME"])["QueueUrl"],
        dlq_url=sqs.get_queue_url(QueueName=env["DLQ_NAME"])["QueueUrl"],
        stream_name=env["STREAM_NAME"],
    )


@pytest.fixture
def fresh_world(localstack: LocalStack) -> Iterator[World]:
    """A queue, DLQ and 2-shard stream of this test's own, deleted afterwards.

    kinesis-mock slows down as a shard fills, so each test starts on empty shards, and the
    deletion gives the memory back.
    """
    suffix = uuid.uuid4().hex[:8]
    sqs, kinesis = localstack.client("sqs"), localstack.client("kinesis")
    world = create_world(
        sqs,
        kinesis,
        queue_name=f"tier-{suffix}",
        dlq_name=f"tier-{suffix}-dlq",
        stream_name=f"tier-{suffix}",
    )
    yield world
    delete_world(sqs, kinesis, world)
