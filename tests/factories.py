"""Factories: submissions in the input contract (valid by default, broken on request) and the
SQS `Message` the daemon holds for one."""

from __future__ import annotations

import base64
import json
import random
import uuid
from typing import Any

from event_processor.pipeline.source import Message


def new_process(
    cmdl: Any = "/usr/bin/python3 -m http.server", user: Any = "alice"
) -> dict[str, Any]:
    return {"cmdl": cmdl, "user": user}


def network_connection(
    source_ip: Any = "10.0.0.5", destination_ip: Any = "93.184.216.34", destination_port: Any = 443
) -> dict[str, Any]:
    return {
        "source_ip": source_ip,
        "destination_ip": destination_ip,
        "destination_port": destination_port,
    }


def submission(
    events: Any = None,
    *,
    submission_id: Any = None,
    device_id: Any = None,
    time_created: Any = "2026-11-22T10:00:00",
) -> dict[str, Any]:
    if events is None:
        events = {
            "new_process": [new_process(), new_process("bash", "root")],
            "network_connection": [network_connection()],
        }
    return {
        "submission_id": str(uuid.uuid4()) if submission_id is None else submission_id,
        "device_id": str(uuid.uuid4()) if device_id is None else device_id,
        "time_created": time_created,
        "events": events,
    }


def encode(doc: Any) -> str:
    """The fleet's wire format: JSON, base64-encoded (stdlib json: it takes any int)."""
    return base64.b64encode(json.dumps(doc).encode()).decode()


def fleet_like(rng: random.Random, device_id: str | None = None) -> dict[str, Any]:
    """3-5 events of each type, as the simulated fleet sends."""
    processes = [
        new_process(
            f"/usr/bin/proc-{rng.randrange(10_000)} --flag {i}", rng.choice(["root", "bob"])
        )
        for i in range(rng.randint(3, 5))
    ]
    connections = [
        network_connection(
            f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
            f"93.184.{rng.randrange(256)}.{rng.randrange(256)}",
            rng.randrange(65536),
        )
        for _ in range(rng.randint(3, 5))
    ]
    return submission(
        {"new_process": processes, "network_connection": connections}, device_id=device_id
    )


def devices_bodies(rng: random.Random, devices: int, submissions: int) -> list[str]:
    """`submissions` fleet-like bodies (encoded) from `devices` devices taking turns, in send
    order: each device sends several, as a FIFO source's groups need."""
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(devices)]
    return [encode(fleet_like(rng, device_id=ids[i % devices])) for i in range(submissions)]


def received_message(
    body: str = "",
    *,
    message_id: str | None = None,
    receipt_handle: str | None = None,
    receive_count: int = 1,
    sent_at_s: float | None = None,
    attributes: dict[str, Any] | None = None,
    received_at: float = 0.0,
    visible_until: float = 0.0,
    group_id: str | None = None,
) -> Message:
    """A `Message` as SqsSource.receive hands it over: `body`, with fresh ids by default."""
    return Message(
        message_id=str(uuid.uuid4()) if message_id is None else message_id,
        receipt_handle=f"rh-{uuid.uuid4().hex}" if receipt_handle is None else receipt_handle,
        body=body,
        receive_count=receive_count,
        sent_at_s=sent_at_s,
        attributes={} if attributes is None else attributes,
        received_at=received_at,
        visible_until=visible_until,
        group_id=group_id,
    )
