"""The sensor-fleet console script's modes against the embedded emulator, signing too."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from devworld.emulator import Emulator, World, free_port
from devworld.verify import expected_sequences
from event_processor.auth.keyset import KeySet
from event_processor.config import AuthMode, Settings
from event_processor.contract.parse import ParsedSubmission, parse_submission
from event_processor.contract.signing import Envelope
from event_processor.tools import fifo
from event_processor.tools.keys import enrolment, new_entry
from sensor_fleet.generator import device_ids, encode, fleet_load, fleet_submissions
from sensor_fleet.sender import Sender, sqs_client
from sensor_fleet.signer import FleetSigner
from tests.conftest import settings_for
from tests.factories import submission
from tests.helpers import (
    Cli,
    check_order,
    client,
    drain_queue,
    eventually,
    queue_depth,
    run_cli,
    send_bodies,
    stream_records,
    wait_for,
)


def fleet(
    emulator: Emulator, world: World, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`sensor-fleet ARGS` to completion, sending to `world`'s queue on the emulator (`env`
    added to its environment)."""
    full = {**os.environ, **emulator.client_env(), "QUEUE_URL": world.queue_url, **(env or {})}
    full.pop("LOCALSTACK_HOST", None)
    return run_cli("sensor-fleet", *args, env=full, timeout_s=120)


@dataclass(frozen=True)
class HostRun:
    returncode: int
    # stdout and stderr (its log, at DEBUG) together.
    output: str
    # The new process's command line, which ends in a marker of this run.
    cmdl: str

    @property
    def device_id(self) -> str:
        return self.output.split("device ")[1].split(":")[0]

    @property
    def sent(self) -> int:
        found = re.search(r"sent (\d+) submissions in \d+ scans", self.output)
        assert found, self.output
        return int(found[1])


def host_with_a_new_process(
    emulator: Emulator,
    world: World,
    tmp_path: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
) -> HostRun:
    """`sensor-fleet host ARGS` on this machine, with a process started after its baseline scan,
    until a scan begun after that process ends; then SIGTERM. Its log says when each scan is done."""
    full = {**os.environ, **emulator.client_env(), "QUEUE_URL": world.queue_url,
            "LOG_LEVEL": "DEBUG", **(env or {})}  # fmt: skip
    full.pop("LOCALSTACK_HOST", None)
    agent = Cli.start(tmp_path / "host.log", "host", "--interval", "0.2", "--state-file",
                      str(tmp_path / "host.json"), *args, env=full, script="sensor-fleet")  # fmt: skip

    def scans() -> int:
        assert agent.process.poll() is None, agent.log_path.read_text(encoding="utf-8")
        done = re.findall(r"host scan (\d+) done", agent.log_path.read_text(encoding="utf-8"))
        return max(map(int, done), default=0)

    argv = [sys.executable, "-c", "import sys; sys.stdin.read()", f"marker-{uuid.uuid4().hex}"]
    try:
        wait_for(lambda: scans() >= 1, 60, "the agent's baseline scan")
        with subprocess.Popen(argv, stdin=subprocess.PIPE) as new:
            assert new.stdin is not None
            # Scan n+1 may have begun before the process did; scan n+2 began after n was seen.
            after = scans() + 2
            wait_for(lambda: scans() >= after, 60, "a scan begun after the new process")
            new.stdin.close()
        agent.process.send_signal(signal.SIGTERM)
        agent.process.wait(timeout=30)
    finally:
        if agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait(timeout=30)
    output = agent.log_path.read_text(encoding="utf-8")
    return HostRun(agent.process.returncode, output, " ".join(argv))


def peek_bodies(emulator: Emulator, queue_url: str, count: int) -> list[str]:
    """The bodies of the queue's `count` messages, left visible in it (visibility timeout 0)."""
    sqs = client(emulator, "sqs")
    seen: dict[str, str] = {}

    def all_seen() -> bool:
        batch = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        ).get("Messages", [])
        seen.update((m["MessageId"], m["Body"]) for m in batch)
        return len(seen) >= count

    wait_for(all_seen, 30, f"{count} messages seen in the queue")
    return list(seen.values())


def test_simulate_sends_one_submission_per_device_per_round(
    emulator: Emulator, world: World
) -> None:
    """simulate: FLEET_SIZE devices, one submission each per round, fixed device ids."""
    result = fleet(
        emulator,
        world,
        "--seed",
        "5",
        "simulate",
        "--fleet-size",
        "4",
        "--rounds",
        "3",
        "--round-min",
        "0",
        "--round-max",
        "0",
        "--invalid-probability",
        "0",
    )
    assert result.returncode == 0, result.stderr
    messages = drain_queue(emulator, world.queue_url)
    assert len(messages) == 12
    parsed = [parse_submission(m["Body"]) for m in messages]
    assert all(isinstance(p, ParsedSubmission) and not p.rejected for p in parsed)
    assert len({p.device_id for p in parsed if isinstance(p, ParsedSubmission)}) == 4


def test_load_count_prints_what_it_sent(emulator: Emulator, world: World) -> None:
    """load --count N sends N submissions and says so."""
    result = fleet(emulator, world, "load", "--count", "123")
    assert result.returncode == 0, result.stderr
    assert "sent 123 submissions" in result.stdout
    assert len(drain_queue(emulator, world.queue_url)) == 123


def _content(doc: Mapping[str, Any]) -> bytes:
    """A submission without its time_created (the only field a seed does not fix)."""
    return orjson.dumps({k: v for k, v in doc.items() if k != "time_created"})


def test_load_to_a_fifo_queue_keeps_each_device_in_order(
    emulator: Emulator, make_world: Callable[..., World]
) -> None:
    """On a FIFO queue every submission carries its device as MessageGroupId (also when the
    generator broke the body's device_id) and its body's SHA-256 as MessageDeduplicationId;
    received back, each device's submissions come in the order sent, more than a receive's
    ten per device."""
    world = make_world(fifo=True)
    devices, count = 6, 150
    result = fleet(emulator, world, "--seed", "8", "load", "--count", str(count),
                   "--fleet-size", str(devices), "--invalid-probability", "0.1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"sent {count} submissions" in result.stdout
    messages = drain_queue(emulator, world.queue_url)
    assert len(messages) == count

    sent: dict[str, list[bytes]] = {}
    for device, doc in itertools.islice(fleet_submissions(8, devices, 0.1), count):
        sent.setdefault(device, []).append(_content(doc))
    received: dict[str, list[bytes]] = {}
    for message in messages:
        system = message["Attributes"]
        doc = orjson.loads(base64.b64decode(message["Body"]))
        received.setdefault(system["MessageGroupId"], []).append(_content(doc))
        assert (
            system["MessageDeduplicationId"] == hashlib.sha256(message["Body"].encode()).hexdigest()
        )
    assert sorted(received) == sorted(device_ids(devices, seed=8))
    assert received == sent
    assert min(len(v) for v in sent.values()) > 10
    assert any(
        orjson.loads(base64.b64decode(m["Body"]))["device_id"] == "not-an-uuid" for m in messages
    )


def test_simulate_and_host_group_by_device_on_a_fifo_queue(
    emulator: Emulator, make_world: Callable[..., World], tmp_path: Path
) -> None:
    """simulate sends each device's rounds in its own group, in round order; host sends in the
    machine's group; bodies sent without a device name their own, or the fixed group."""
    world = make_world(fifo=True)
    result = fleet(emulator, world, "--seed", "5", "simulate", "--fleet-size", "3", "--rounds",
                   "4", "--round-min", "0", "--round-max", "0", "--invalid-probability", "0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    messages = drain_queue(emulator, world.queue_url)
    assert len(messages) == 12
    groups: dict[str, list[str]] = {}
    for message in messages:
        doc = orjson.loads(base64.b64decode(message["Body"]))
        assert message["Attributes"]["MessageGroupId"] == doc["device_id"]
        groups.setdefault(doc["device_id"], []).append(doc["time_created"])
    assert sorted(groups) == sorted(device_ids(3, seed=5))
    assert all(len(t) == 4 and t == sorted(t) for t in groups.values())  # rounds in order

    host = host_with_a_new_process(emulator, world, tmp_path)
    assert host.returncode == 0, host.output
    assert {m["Attributes"]["MessageGroupId"] for m in drain_queue(emulator, world.queue_url)} == {
        host.device_id
    }

    named = encode(submission())
    send_bodies(emulator, world.queue_url, [named, "not a submission"])
    assert [m["Attributes"]["MessageGroupId"] for m in drain_queue(emulator, world.queue_url)] == [
        orjson.loads(base64.b64decode(named))["device_id"],
        fifo.UNKNOWN_DEVICE_GROUP,
    ]


def test_load_rate_sends_rate_times_duration(emulator: Emulator, world: World) -> None:
    """load --rate R --duration S sends R*S submissions."""
    result = fleet(emulator, world, "load", "--rate", "40", "--duration", "1")
    assert result.returncode == 0, result.stderr
    assert len(drain_queue(emulator, world.queue_url)) == 40


async def test_host_agent_sends_a_new_process_and_the_daemon_publishes_what_it_sent(
    emulator: Emulator, world: World, daemon: Any, tmp_path: Path
) -> None:
    """host on this machine: a process started between scans is sent with its command line and
    user; every submission is valid; the daemon publishes all of them and rejects nothing."""
    run = await asyncio.to_thread(host_with_a_new_process, emulator, world, tmp_path)
    assert run.returncode == 0, run.output
    assert run.sent >= 1, run.output
    bodies = await asyncio.to_thread(peek_bodies, emulator, world.queue_url, run.sent)
    assert all(isinstance(parse_submission(b), ParsedSubmission) for b in bodies)
    docs = [orjson.loads(base64.b64decode(b)) for b in bodies]
    assert {d["device_id"] for d in docs} == {run.device_id}
    new_processes = [e for d in docs for e in d["events"]["new_process"]]
    assert {"cmdl": run.cmdl, "user": psutil.Process().username()} in new_processes

    running = await daemon(settings_for(world))
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    assert await running.stop() == 0
    records = await asyncio.to_thread(stream_records, emulator, world)
    assert check_order(records) == expected_sequences(bodies)
    assert {"cmdl": run.cmdl, "user": psutil.Process().username()} in [
        r["event_data"] for r in records
    ]
    assert await asyncio.to_thread(drain_queue, emulator, world.dlq_url) == []


def test_sender_survives_unreachable_sqs(monkeypatch: pytest.MonkeyPatch) -> None:
    """With SQS unreachable, send() gives up after its ride-out time instead of raising."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens
    monkeypatch.delenv("LOCALSTACK_HOST", raising=False)
    sqs = sqs_client(localstack=False, settings=Settings(aws_region="eu-west-1"))
    sender = Sender(sqs, "http://127.0.0.1:1/123456789012/q", outage_ride_s=0.5)
    assert sender.send(["x"] * 3) == []
    assert sender.dropped == 3


def test_localstack_client_is_used_when_asked(emulator: Emulator, world: World) -> None:
    """--localstack goes through localstack-client, which honours AWS_ENDPOINT_URL."""
    result = fleet(emulator, world, "--localstack", "load", "--count", "5")
    assert result.returncode == 0, result.stderr
    assert len(drain_queue(emulator, world.queue_url)) == 5


# --- signing (docs/authentication.md) -----------------------------------------------------------


def key_set_file(tmp_path: Path, *key_ids: str) -> Path:
    """A key set file holding a fresh master key for each id."""
    doc = {"keys": {k: v for key_id in key_ids for k, v in new_entry(key_id).items()}}
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def key_set_secret(emulator: Emulator, *key_ids: str) -> tuple[str, KeySet]:
    """A Secrets Manager secret of the emulator holding a fresh master key for each id: (its
    name, the key set)."""
    doc = {"keys": {k: v for key_id in key_ids for k, v in new_entry(key_id).items()}}
    name = f"sensor-keys-{uuid.uuid4().hex[:8]}"
    client(emulator, "secretsmanager").create_secret(Name=name, SecretString=json.dumps(doc))
    return name, KeySet.parse(json.dumps(doc))


def envelopes(keys: KeySet, messages: list[dict[str, Any]]) -> list[Envelope]:
    """Each message's envelope, checked by the daemon's own verifier (which must accept it)."""
    verified = [keys.verify(m.get("MessageAttributes", {}), m["Body"]) for m in messages]
    assert all(isinstance(v, Envelope) for v in verified), verified
    return [v for v in verified if isinstance(v, Envelope)]


def test_simulate_signs_as_each_device_with_a_key_set_file(
    emulator: Emulator, world: World, tmp_path: Path
) -> None:
    """--auth-keys-file: every submission is signed as the device that sends it, also when the
    generator broke the body's device_id."""
    path = key_set_file(tmp_path, "k1")
    result = fleet(emulator, world, "--seed", "5", "--auth-keys-file", str(path), "simulate",
                   "--fleet-size", "4", "--rounds", "2", "--round-min", "0", "--round-max", "0",
                   "--invalid-probability", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "signing with key id k1" in result.stderr
    messages = drain_queue(emulator, world.queue_url)
    assert len(messages) == 8
    signed = envelopes(KeySet.parse(path.read_bytes()), messages)
    assert sorted({e.device_id for e in signed}) == sorted(device_ids(4, seed=5))
    assert {e.key_id for e in signed} == {"k1"}
    assert {orjson.loads(base64.b64decode(m["Body"]))["device_id"] for m in messages} == {
        "not-an-uuid"
    }


def test_load_signs_from_the_secret_with_the_key_id_it_is_given(
    emulator: Emulator, world: World
) -> None:
    """AUTH_KEYS_SECRET_ID with two keys: no --key-id is a usage error naming the ids (nothing
    sent, no key shown); --key-id picks the master key."""
    name, keys = key_set_secret(emulator, "2026-11-02-aaaaaa", "2026-12-03-bbbbbb")
    refused = fleet(emulator, world, "load", "--count", "5", env={"AUTH_KEYS_SECRET_ID": name})
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "2026-11-02-aaaaaa, 2026-12-03-bbbbbb): pass --key-id" in refused.stderr
    for master in keys.keys.values():
        assert base64.b64encode(master).decode() not in refused.stdout + refused.stderr
    assert drain_queue(emulator, world.queue_url) == []

    result = fleet(emulator, world, "--key-id", "2026-12-03-bbbbbb", "load", "--count", "25",
                   env={"AUTH_KEYS_SECRET_ID": name})  # fmt: skip
    assert result.returncode == 0, result.stderr
    signed = envelopes(keys, drain_queue(emulator, world.queue_url))
    assert len(signed) == 25
    assert {e.key_id for e in signed} == {"2026-12-03-bbbbbb"}


def test_host_signs_as_its_enrolment(emulator: Emulator, world: World, tmp_path: Path) -> None:
    """host --enrolment: the agent reports as the enrolled device and signs as it; with a key
    set as well it refuses to start."""
    keys = KeySet.parse(key_set_file(tmp_path, "k1").read_bytes())
    enrolled = str(uuid.uuid4())
    path = tmp_path / "enrolment.json"
    path.write_text(json.dumps(enrolment(keys, enrolled, None)), encoding="utf-8")
    result = host_with_a_new_process(emulator, world, tmp_path, "--enrolment", str(path))
    assert result.returncode == 0, result.output
    assert f"device {enrolled}:" in result.output
    messages = drain_queue(emulator, world.queue_url)
    assert messages
    assert {e.device_id for e in envelopes(keys, messages)} == {enrolled}
    assert {orjson.loads(base64.b64decode(m["Body"]))["device_id"] for m in messages} == {enrolled}

    both = fleet(emulator, world, "--auth-keys-file", str(tmp_path / "keys.json"), "host",
                 "--rounds", "1", "--enrolment", str(path))  # fmt: skip
    assert both.returncode == 2
    assert "--enrolment holds the device's key" in both.stderr


def test_an_unreadable_key_set_stops_the_fleet_before_it_sends(
    emulator: Emulator, world: World, tmp_path: Path
) -> None:
    """A missing secret exits 3 naming it; an invalid key set file exits 2; nothing is sent."""
    missing = fleet(emulator, world, "load", "--count", "5",
                    env={"AUTH_KEYS_SECRET_ID": f"no-such-{uuid.uuid4().hex}"})  # fmt: skip
    assert missing.returncode == 3, missing.stderr
    assert "no-such-" in missing.stderr
    invalid = tmp_path / "keys.json"
    invalid.write_text('{"keys": {"k1": "c2hvcnQ="}}', encoding="utf-8")
    result = fleet(emulator, world, "--auth-keys-file", str(invalid), "load", "--count", "5")
    assert result.returncode == 2
    assert "invalid key set: key k1 is 5 bytes" in result.stderr
    assert drain_queue(emulator, world.queue_url) == []


async def test_an_enforcing_daemon_publishes_the_signed_fleet_and_rejects_the_unsigned(
    emulator: Emulator, world: World, daemon: Any
) -> None:
    """AUTH_MODE=enforce on the same secret: the signed load is published whole (its broken
    bodies rejected by the contract, not the signature); unsigned bodies go to the DLQ."""
    name, keys = key_set_secret(emulator, "k1")
    load = await asyncio.to_thread(
        fleet, emulator, world, "--seed", "3", "load", "--count", "60", "--fleet-size", "5",
        "--invalid-probability", "0.05", env={"AUTH_KEYS_SECRET_ID": name},
    )  # fmt: skip
    assert load.returncode == 0, load.stderr
    docs = list(itertools.islice(fleet_load(3, 5, 0.05), 60))
    unsigned = [encode(submission()) for _ in range(3)]
    stolen = FleetSigner(keys).device(device_ids(5, seed=3)[0])
    impostor = encode(submission(device_id=device_ids(5, seed=3)[1]))
    await asyncio.to_thread(
        send_bodies, emulator, world.queue_url, [*unsigned, impostor],
        [None, None, None, stolen.attributes(impostor)],
    )  # fmt: skip

    settings = settings_for(world, auth_mode=AuthMode.ENFORCE, auth_keys_secret_id=name)
    running = await daemon(settings)
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    assert await running.stop() == 0

    expected = expected_sequences([encode(d) for d in docs])
    assert check_order(await asyncio.to_thread(stream_records, emulator, world)) == expected
    auth = "event_processor_auth_results_total"
    assert running.metric(auth, {"result": "ok"}) == 60
    assert running.metric(auth, {"result": "signature_missing"}) == 3
    assert running.metric(auth, {"result": "device_mismatch"}) == 1
    dead = await asyncio.to_thread(drain_queue, emulator, world.dlq_url)
    rejected = {m["Body"]: m["MessageAttributes"]["reason"]["StringValue"] for m in dead}
    assert {b: rejected[b] for b in [*unsigned, impostor]} == {
        **dict.fromkeys(unsigned, "signature_missing"),
        impostor: "device_mismatch",
    }
    assert set(rejected.values()) - {"signature_missing", "device_mismatch"} <= {
        "invalid_field", "invalid_body", "not_an_object"
    }  # fmt: skip
