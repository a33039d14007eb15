"""The operator tools against LocalStack, on what the daemon itself dead-lettered and published:
`dlq inspect`, `dlq redrive`, `tail`."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from devworld.emulator import World, read_stream
from event_processor.contract.signing import SIGNATURE_ATTRIBUTE
from event_processor.tools.aws import queue_counts
from sensor_fleet.sender import Sender
from sensor_fleet.signer import FleetSigner
from tests.factories import encode, new_process, submission
from tests.helpers import wait_for
from tests.localstack.support import (
    EXIT_TIMEOUT_S,
    LocalStack,
    compose_key_set,
    daemon,
    drain,
    run_cli,
    wait_drained,
    world_env,
)

pytestmark = pytest.mark.localstack

VALID = 20
NOT_JSON = ["not json", "{{", "[1, 2"]
# device_id null: rejected whole, as an invalid field.
NULL_DEVICE = 2
# Valid submissions with one rejected event each (a blank `user`: an invalid field too).
WITH_BAD_EVENT = 3


def send_signed(localstack: LocalStack, world: World, bodies: list[str]) -> list[str]:
    """Send `bodies`, each signed with compose's key set by the device it names (a random one
    when it names none); return those SQS accepted."""
    signer = FleetSigner(compose_key_set(localstack))
    attributes = []
    for body in bodies:
        try:
            device = json.loads(base64.b64decode(body, validate=True))["device_id"]
        except (ValueError, TypeError, KeyError):
            device = None
        attributes.append(signer.attributes(device or str(uuid.uuid4()), body))
    return Sender(localstack.client("sqs"), world.queue_url).send(bodies, attributes)


def test_operator_tools_on_what_the_daemon_left(
    localstack: LocalStack, fresh_world: World, tmp_path: Path
) -> None:
    """inspect counts the daemon's dead letters, redrive moves one reason back, tail prints all."""
    world = fresh_world
    sqs = localstack.client("sqs")
    bad_event = {"new_process": [new_process(), new_process(user=" ")]}
    bodies = (
        [encode(submission()) for _ in range(VALID)]
        + NOT_JSON
        + [encode({**submission(), "device_id": None}) for _ in range(NULL_DEVICE)]
        + [encode(submission(bad_event)) for _ in range(WITH_BAD_EVENT)]
    )
    # Signed, for compose's daemon enforces signatures: what it rejects, the contract rejects.
    assert len(send_signed(localstack, world, bodies)) == len(bodies)
    with daemon(localstack, tmp_path / "daemon.log", **world_env(world)) as running:
        wait_drained(localstack, world, 120, running)
        assert running.terminate()[0] == 0
    letters = len(NOT_JSON) + NULL_DEVICE + WITH_BAD_EVENT

    inspect = run_cli(localstack, world, "dlq", "inspect", "--json")
    assert inspect.returncode == 0, inspect.stderr
    doc = json.loads(inspect.stdout)
    assert doc["by_kind"] == {"submission": len(NOT_JSON) + NULL_DEVICE, "event": WITH_BAD_EVENT}
    by_reason = {r["reason"]: r["by_kind"] for r in doc["reasons"]}
    assert by_reason["invalid_body"] == {"submission": len(NOT_JSON)}
    assert by_reason["invalid_field"] == {"submission": NULL_DEVICE, "event": WITH_BAD_EVENT}
    assert doc["events"] == WITH_BAD_EVENT
    assert queue_counts(sqs, world.dlq_url) == (letters, 0), "inspect consumed nothing"

    dry = run_cli(localstack, world, "dlq", "redrive", "--reason", "invalid_body", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would move {len(NOT_JSON)}" in dry.stdout
    assert queue_counts(sqs, world.dlq_url) == (letters, 0), "a dry run changed nothing"
    redrive = run_cli(localstack, world, "dlq", "redrive", "--reason", "invalid_body")
    assert redrive.returncode == 0, redrive.stderr
    assert f"moved {len(NOT_JSON)}," in redrive.stdout
    assert "failed 0" in redrive.stdout
    moved = drain(localstack, world.queue_url)
    assert sorted(m["Body"] for m in moved) == sorted(NOT_JSON)
    # Each carries its signature back, so that an enforcing daemon takes it again.
    assert all(SIGNATURE_ATTRIBUTE in m["MessageAttributes"] for m in moved)
    assert queue_counts(sqs, world.dlq_url) == (letters - len(NOT_JSON), 0)

    tail = run_cli(localstack, world, "tail", "--from", "trim-horizon", "--no-follow")
    assert tail.returncode == 0, tail.stderr
    stored = read_stream(localstack.client("kinesis"), world.stream_name)
    assert tail.stdout.splitlines() == [r["data"].decode() for r in stored]
    published = VALID * 3 + WITH_BAD_EVENT
    assert len(stored) == published
    print(
        f"\n[tools] inspect: {doc['by_kind']}; redrive: {redrive.stdout.strip().splitlines()[-1]}"
    )


def test_tail_follows_until_sigterm(
    localstack: LocalStack, fresh_world: World, tmp_path: Path
) -> None:
    """`tail` follows the stream as the daemon publishes, and ends with 0 on SIGTERM."""
    world = fresh_world
    env = {**os.environ, **localstack.client_env(), **world_env(world)}
    out = tmp_path / "tail.out"
    docs = [submission() for _ in range(4)]
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "event_processor", "tail", "--from", "trim-horizon",
             "--interval", "0.2"],
            env=env, stdout=sink, stderr=subprocess.PIPE,
        )  # fmt: skip
    try:
        send_signed(localstack, world, [encode(d) for d in docs])
        with daemon(localstack, tmp_path / "daemon.log", **world_env(world)) as running:
            wait_for(
                lambda: len(out.read_bytes().splitlines()) >= len(docs) * 3,
                60,
                "tail printing every record",
            )
            assert running.terminate()[0] == 0
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert {line["submission_id"] for line in lines} == {d["submission_id"] for d in docs}
