"""Fleet-like submissions: 3-5 events of each type, with a small share of broken fields."""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson

_USERS = ("root", "alice", "bob", "svc-backup", "www-data")
_COMMANDS = (
    "/usr/sbin/sshd -D",
    "/bin/bash -c 'tar czf /tmp/backup.tgz /home'",
    "/usr/bin/python3 /opt/agent/run.py --verbose",
    "curl -s https://example.com/install.sh",
    "/usr/lib/systemd/systemd-journald",
)


def _maybe(rng: random.Random, probability: float, good: Any, bad: Any) -> Any:
    return bad if rng.random() < probability else good


def _ip(rng: random.Random, prefix: str) -> str:
    return f"{prefix}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def make_submission(
    rng: random.Random, device_id: str, invalid_probability: float = 0.01
) -> dict[str, Any]:
    """One submission as the original fleet sends it; each field breaks with the probability."""
    p = invalid_probability
    processes = [
        {
            "cmdl": _maybe(rng, p, rng.choice(_COMMANDS), None),
            "user": rng.choice(_USERS),
        }
        for _ in range(rng.randint(3, 5))
    ]
    connections = [
        {
            "source_ip": _ip(rng, "10.0"),
            "destination_ip": _maybe(rng, p, _ip(rng, "93.184"), "not-an-ip"),
            "destination_port": rng.choice((22, 53, 80, 443, 8080, rng.randrange(1024, 65536))),
        }
        for _ in range(rng.randint(3, 5))
    ]
    return {
        "submission_id": _maybe(
            rng, p, str(uuid.UUID(int=rng.getrandbits(128), version=4)), "not-an-uuid"
        ),
        "device_id": _maybe(rng, p, device_id, "not-an-uuid"),
        "time_created": datetime.now().isoformat(),  # device local time, as sensors send it
        "events": {"new_process": processes, "network_connection": connections},
    }


def encode(doc: Any) -> str:
    """The fleet's wire format: JSON, base64-encoded."""
    return base64.b64encode(orjson.dumps(doc)).decode()


def device_ids(count: int, seed: int = 0) -> list[str]:
    """Fixed device ids, stable across runs for a seed."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


def fleet_submissions(
    seed: int | None, fleet_size: int, invalid_probability: float
) -> Iterator[tuple[str, dict[str, Any]]]:
    """`sensor-fleet load`'s submissions in the order it sends them, each with the device that
    sends it (and signs it: the body's own device_id may be broken on purpose)."""
    rng = random.Random(seed)
    devices = device_ids(fleet_size, seed=seed or 0)
    while True:
        device = rng.choice(devices)
        yield device, make_submission(rng, device, invalid_probability)


def fleet_load(
    seed: int | None, fleet_size: int, invalid_probability: float
) -> Iterator[dict[str, Any]]:
    """`sensor-fleet load`'s submissions in the order it sends them: the same for a seed (all
    but `time_created`), so a test can work out what a load sent."""
    for _, doc in fleet_submissions(seed, fleet_size, invalid_probability):
        yield doc
