"""Real stream records, written by the daemon into the emulator, against docs/schemas/output.json."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import orjson

from devworld.emulator import Emulator, World, read_stream
from devworld.verify import expected_sequences
from event_processor.contract.records import PartitionKey
from event_processor.contract.rules import EventType
from tests.conftest import settings_for
from tests.factories import encode, fleet_like, network_connection, new_process, submission
from tests.helpers import client, eventually, queue_depth, send_bodies

OUTPUT_SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "output.json"
# The edge submission: an upper-case id (records carry it lower-cased) and a time with an offset.
EDGE_ID = "3F2B8C1E-9D4A-4E6B-8F1A-2C3D4E5F6A7B"
EDGE_TIME = "2026-11-22T10:00:00.5+05:30"
EDGE_CMDL = 'C:\\Windows\\cmd.exe /c "dir" \u00e9\U0001f600'


def bodies() -> list[str]:
    """Fleet traffic plus what a record must still describe: case, offsets, gaps, extras, bounds."""
    rng = random.Random(11)
    docs: list[dict[str, Any]] = [fleet_like(rng) for _ in range(20)]
    edge_events = {
        "new_process": [
            {**new_process(EDGE_CMDL, "ünïcode"), "pid": 4},  # pid is dropped
            new_process(user="  "),  # rejected: a gap in the sequence
            new_process(cmdl="x" * 10_000),
        ],
        "usb_inserted": [{"vendor": "x"}],  # rejected: unknown type
        "network_connection": [network_connection("0.0.0.0", "255.255.255.255", 65535)],
    }
    docs.append(submission(edge_events, submission_id=EDGE_ID, time_created=EDGE_TIME))
    return [encode(doc) for doc in docs]


async def test_every_stream_record_validates_against_the_output_schema(
    emulator: Emulator, world: World, daemon: Any
) -> None:
    """What the daemon publishes is what docs/schemas/output.json describes, record by record."""
    sent = bodies()
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, sent)
    running = await daemon(settings_for(world, partition_key=PartitionKey.SUBMISSION_ID))
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    assert await running.stop() == 0

    raw = await asyncio.to_thread(read_stream, client(emulator, "kinesis"), world.stream_name)
    validator = jsonschema.Draft202012Validator(json.loads(OUTPUT_SCHEMA.read_text("utf-8")))
    records = [orjson.loads(stored["data"]) for stored in raw]
    assert len(records) == sum(len(s) for s in expected_sequences(sent).values())
    for record, stored in zip(records, raw, strict=True):
        errors = [error.message for error in validator.iter_errors(record)]
        assert not errors, (record, errors)
        assert stored["partition_key"] == record["submission_id"]
    assert {record["event_type"] for record in records} == set(EventType)

    edge = sorted(
        (r for r in records if r["submission_id"] == EDGE_ID.lower()), key=lambda r: r["sequence"]
    )
    assert [r["sequence"] for r in edge] == [0, 2, 4]
    assert {r["time_created"] for r in edge} == {EDGE_TIME}
    assert edge[0]["event_data"] == {"cmdl": EDGE_CMDL, "user": "ünïcode"}
