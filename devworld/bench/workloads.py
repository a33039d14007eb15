"""Backlogs for the bench: fleet traffic, bodies near SQS's 1 MiB limit, and hostile bodies.

Every body is built from sensor_fleet's generator (or its envelope) and loaded with its Sender,
so the bench exercises the same wire format as the fleet. A signed backlog (AUTH_MODE, see
docs/authentication.md) carries each body's `sensor-signature` attribute, made with
`event_processor.contract.signing` and a key set of the bench's own.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from devworld.emulator import Emulator, World
from event_processor.auth.keyset import KeySet
from event_processor.contract import signing
from event_processor.tools.keys import new_entry
from sensor_fleet.generator import device_ids, encode, make_submission
from sensor_fleet.sender import Sender

_T = TypeVar("_T")
# SendMessage's MessageAttributes: name -> {"DataType": ..., "StringValue": ...}.
MessageAttributes = dict[str, dict[str, str]]

# SQS's limit for one message body and for a whole SendMessageBatch (1 MiB since 2025;
# moto 5.2 enforces both), so near-limit bodies go one batch each.
SQS_MAX_BYTES = 1_048_576
# SendMessageBatch takes at most 10 entries.
_BATCH_ENTRIES = 10
# Room left under SQS_MAX_BYTES for the near-limit bodies: a little under the limit, not at it.
_BODY_MARGIN_BYTES = 512
# The smallest valid event: both fields required, non-empty strings (docs/contract.md).
TINY_EVENT: dict[str, str] = {"cmdl": "a", "user": "b"}
# Hostile bodies: kinds of invalid `events` items (docs/contract.md rejects each one alone).
HOSTILE_KINDS = ("numbers", "empty_objects", "mixed")
# What "mixed" cycles through: not an object, empty object, fields missing or of a wrong type.
_MIXED_ITEMS: tuple[Any, ...] = (1, {}, "x", None, [], {"cmdl": ""}, True, {"user": 7})


def fleet_backlog(count: int, seed: int) -> list[tuple[str, str]]:
    """(device id, body) of fleet-like submissions: 3-5 events of each type, 1% broken fields,
    as the fleet sends them. The device is the sender, which signs with its own id even when
    the body's device_id is the broken field."""
    rng = random.Random(seed)
    devices = device_ids(100, seed)
    submissions = []
    for _ in range(count):
        device_id = rng.choice(devices)
        submissions.append((device_id, encode(make_submission(rng, device_id, 0.01))))
    return submissions


def backlog(count: int, seed: int) -> list[str]:
    """The bodies of `fleet_backlog(count, seed)`: what an unsigned fleet sends."""
    return [body for _, body in fleet_backlog(count, seed)]


@dataclass(frozen=True)
class BenchKeys:
    """A key set of one fresh master key: the daemon reads `text`, the bench signs with it."""

    key_id: str
    text: str

    @classmethod
    def new(cls, key_id: str = "bench") -> BenchKeys:
        return cls(key_id, json.dumps({"keys": new_entry(key_id)}))

    def write(self, directory: Path) -> Path:
        """The key set as an AUTH_KEYS_FILE in `directory`; its path."""
        path = directory / "bench-keys.json"
        path.write_text(self.text)
        path.chmod(0o600)
        return path

    def sign(self, submissions: Sequence[tuple[str, str]]) -> list[MessageAttributes]:
        """Each (device id, body)'s attributes, as that device signs it (its derived key)."""
        keys = KeySet.parse(self.text)
        return [
            signing.signature_attributes(
                keys.device_key(self.key_id, device_id), self.key_id, device_id, body
            )
            for device_id, body in submissions
        ]


def _envelope(rng: random.Random, device_id: str) -> dict[str, Any]:
    """A valid submission without events: ids and time as the fleet sends them."""
    return {
        "submission_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "device_id": device_id,
        "time_created": datetime.now().isoformat(),
        "events": {},
    }


def _long_command(rng: random.Random) -> str:
    """A plausible 150-350 character command line (agents with long argument lists)."""
    args = [f"--opt-{rng.randrange(1000)}=/var/lib/agent/{rng.getrandbits(64):016x}"]
    while sum(len(a) + 1 for a in args) < rng.randint(150, 350):
        args.append(f"--opt-{rng.randrange(1000)}=/var/lib/agent/{rng.getrandbits(64):016x}")
    return "/usr/bin/python3 /opt/agent/run.py " + " ".join(args)


def large_body(rng: random.Random, device_id: str, target_bytes: int) -> str:
    """A valid base64 submission of about `target_bytes`, every event valid, types alternating."""
    doc = make_submission(rng, device_id, 0.0)
    processes: list[Any] = doc["events"]["new_process"]
    connections: list[Any] = doc["events"]["network_connection"]
    raw_budget = target_bytes * 3 // 4  # base64 turns 3 bytes into 4
    size = len(orjson.dumps(doc))
    while True:
        if len(processes) <= len(connections):
            event: dict[str, Any] = {"cmdl": _long_command(rng), "user": "svc-backup"}
            bucket = processes
        else:
            event = {
                "source_ip": f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                "destination_ip": f"93.184.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                "destination_port": rng.choice((22, 53, 80, 443, 8080)),
            }
            bucket = connections
        grown = size + len(orjson.dumps(event)) + 1  # + the comma
        if grown > raw_budget:
            return encode(doc)
        bucket.append(event)
        size = grown


def large_bodies(count: int, seed: int, min_bytes: int, max_bytes: int) -> list[str]:
    """`count` large valid bodies, each of a size drawn from [min_bytes, max_bytes]."""
    rng = random.Random(seed)
    devices = device_ids(20, seed + 1)
    return [
        large_body(rng, rng.choice(devices), rng.randint(min_bytes, max_bytes))
        for _ in range(count)
    ]


def tiny_events_body(rng: random.Random, device_id: str, *, base64: bool) -> str:
    """As many TINY_EVENTs as fit under SQS's limit, as plain JSON or as base64 JSON."""
    doc = _envelope(rng, device_id)
    budget = SQS_MAX_BYTES - _BODY_MARGIN_BYTES
    if base64:
        budget = budget * 3 // 4
    per_event = len(orjson.dumps(TINY_EVENT)) + 1  # + the comma
    # `"new_process":[]` inside the braces that already close `events`.
    overhead = len(orjson.dumps(doc)) + len('"new_process":[]')
    doc["events"]["new_process"] = [TINY_EVENT] * ((budget - overhead) // per_event)
    return encode(doc) if base64 else orjson.dumps(doc).decode()


def hostile_body(kind: str, items: int, seed: int) -> str:
    """A valid envelope (base64, as the fleet sends) whose `items` events are all invalid."""
    rng = random.Random(seed)
    doc = _envelope(rng, device_ids(1, seed)[0])
    if kind == "numbers":
        doc["events"]["new_process"] = [1] * items
    elif kind == "empty_objects":
        doc["events"]["new_process"] = [{}] * items
    elif kind == "mixed":
        mixed = [_MIXED_ITEMS[i % len(_MIXED_ITEMS)] for i in range(items)]
        half = items // 2
        doc["events"]["new_process"] = mixed[:half]
        doc["events"]["network_connection"] = mixed[half:]
    else:
        raise ValueError(f"unknown hostile kind {kind!r}; one of {HOSTILE_KINDS}")
    body = encode(doc)
    if len(body) > SQS_MAX_BYTES:
        raise ValueError(f"{kind} body of {items} items is {len(body)} bytes, over SQS's limit")
    return body


def load(
    emulator: Emulator,
    world: World,
    bodies: list[str],
    attributes: Sequence[MessageAttributes] | None = None,
) -> None:
    """Send every body to the world's queue with the fleet's Sender, straight to moto
    (with `attributes[i]` on `bodies[i]` for a signed backlog, `BenchKeys.sign`)."""
    sender = Sender(emulator.boto3_client("sqs"), world.queue_url)
    accepted = len(sender.send(bodies, attributes))
    if accepted != len(bodies):
        raise RuntimeError(f"only {accepted} of {len(bodies)} backlog messages were sent")
