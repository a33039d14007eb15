"""localstack/ready.d/init-aws.sh as LocalStack runs it: a READY hook that creates the world,
the sensors' key set secret included."""

from __future__ import annotations

import json

import pytest

from devworld.emulator import World
from tests.localstack.support import LocalStack, compose_key_set, http_json

pytestmark = pytest.mark.localstack


def test_hook_ran_as_a_ready_script(localstack: LocalStack) -> None:
    """LocalStack ran the project's hook in its READY stage, and it succeeded."""
    init = http_json(f"{localstack.endpoint_url}/_localstack/init/ready")
    assert init["completed"] is True
    scripts = [(s["stage"], s["name"], s["state"]) for s in init["scripts"]]
    assert scripts == [("READY", "init-aws.sh", "SUCCESSFUL")]


def test_hook_created_queue_dlq_and_stream(localstack: LocalStack, compose_world: World) -> None:
    """The queue redrives to the DLQ after MAX_RECEIVE_COUNT; the DLQ keeps 14 days; 2 shards."""
    env = localstack.compose_env("localstack")
    sqs, kinesis = localstack.client("sqs"), localstack.client("kinesis")
    dlq = sqs.get_queue_attributes(QueueUrl=compose_world.dlq_url, AttributeNames=["All"])
    queue = sqs.get_queue_attributes(QueueUrl=compose_world.queue_url, AttributeNames=["All"])
    policy = json.loads(queue["Attributes"]["RedrivePolicy"])
    assert policy["deadLetterTargetArn"] == dlq["Attributes"]["QueueArn"]
    assert int(policy["maxReceiveCount"]) == int(env["MAX_RECEIVE_COUNT"]) == 5
    assert dlq["Attributes"]["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    summary = kinesis.describe_stream_summary(StreamName=compose_world.stream_name)
    stream = summary["StreamDescriptionSummary"]
    assert (stream["StreamStatus"], stream["OpenShardCount"]) == ("ACTIVE", int(env["SHARD_COUNT"]))
    assert stream["OpenShardCount"] == 2


def test_hook_stored_the_key_set(localstack: LocalStack) -> None:
    """The secret the daemon and the fleet name holds a valid key set of one 32-byte key."""
    env = localstack.compose_env("localstack")
    assert (
        localstack.compose_env("event-processor")["AUTH_KEYS_SECRET_ID"]
        == (env["AUTH_KEYS_SECRET_NAME"])
    )
    keys = compose_key_set(localstack)
    assert [len(master) for master in keys.keys.values()] == [32]
    assert keys.revoked_devices == frozenset()
    secret = localstack.client("secretsmanager").describe_secret(
        SecretId=env["AUTH_KEYS_SECRET_NAME"]
    )
    assert secret["Name"] == env["AUTH_KEYS_SECRET_NAME"]
    print(f"\n[init hook] secret {secret['Name']}: key ids {sorted(keys.keys)}")
