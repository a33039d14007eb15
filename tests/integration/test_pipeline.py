"""The daemon against the embedded emulator: everything valid published, in order, the rest dead-lettered."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from typing import Any

import aiohttp
import orjson

from devworld.emulator import Emulator, World, free_port
from devworld.verify import expected_sequences
from event_processor.contract.letters import read_letter
from event_processor.contract.rules import EventType
from tests.conftest import settings_for
from tests.factories import encode, fleet_like, network_connection, new_process, submission
from tests.helpers import (
    check_order,
    drain_queue,
    eventually,
    queue_depth,
    send_bodies,
    stream_records,
)


async def test_fleet_batch_is_published_in_order_and_rejections_reach_the_dlq(
    emulator: Emulator, world: World, daemon: Any
) -> None:
    """Valid events land once each, ordered per submission on one shard; the DLQ has the rest."""
    rng = random.Random(7)
    devices = [str(rng.getrandbits(128)) for _ in range(5)]
    valid = [encode(fleet_like(rng)) for _ in range(80)]
    with_bad_events = [
        encode(submission({"new_process": [new_process(cmdl=None), new_process()]})),
        encode(
            submission({"network_connection": [network_connection(destination_ip="not-an-ip")]})
        ),
    ]
    whole_bad = [
        encode(submission(submission_id="not-an-uuid")),
        "this is not json",
        encode([1, 2, 3]),
    ]
    empty = [encode(submission({}))]
    bodies = valid + with_bad_events + whole_bad + empty
    assert len(devices) == 5
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, bodies)

    running = await daemon(settings_for(world))
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    assert await running.stop() == 0

    records = await asyncio.to_thread(stream_records, emulator, world)
    expected = expected_sequences(bodies)
    assert check_order(records) == expected
    assert len(records) == sum(len(s) for s in expected.values()), "duplicates without faults"
    for record in records:
        assert record["_key"] == record["device_id"]
        assert set(record) - {"_shard", "_seq", "_key"} == {
            "event_id",
            "event_type",
            "device_id",
            "submission_id",
            "sequence",
            "time_created",
            "processed_at",
            "event_data",
        }
        assert record["processed_at"].endswith("Z")

    dead = await asyncio.to_thread(drain_queue, emulator, world.dlq_url)
    reasons = sorted(m["MessageAttributes"]["reason"]["StringValue"] for m in dead)
    assert reasons == sorted(
        ["invalid_field", "invalid_field", "invalid_field", "invalid_body", "not_an_object"]
    )
    whole = [m for m in dead if m["Body"] in whole_bad]
    assert len(whole) == 3, "rejected submissions keep their original body"
    for message in whole:
        attrs = message["MessageAttributes"]
        assert {"reason", "detail", "source_message_id", "receive_count"} <= set(attrs)
    letters = [read_letter(m["Body"]) for m in dead if m["Body"] not in whole_bad]
    assert all(letter is not None and letter.submission_id for letter in letters)
    events = [e for letter in letters if letter is not None for e in letter.events]
    assert sorted((e.field, e.sequence) for e in events) == [
        ("cmdl", 0),
        ("destination_ip", 0),
    ]
    assert all(isinstance(e.event, dict) and not e.truncated for e in events)

    published = sum(
        running.metric("event_processor_events_published_total", {"event_type": t.value})
        for t in EventType
    )
    assert published == len(records)
    assert running.metric("event_processor_messages_received_total") == len(bodies)
    assert running.metric("event_processor_submissions_total", {"outcome": "rejected"}) == 3


async def test_partition_key_submission_id(emulator: Emulator, world: World, daemon: Any) -> None:
    """With PARTITION_KEY=submission_id, records are keyed by their submission."""
    bodies = [encode(submission()) for _ in range(5)]
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, bodies)
    running = await daemon(settings_for(world, partition_key="submission_id"))
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    assert await running.stop() == 0
    records = await asyncio.to_thread(stream_records, emulator, world)
    assert len(records) == 15
    assert all(r["_key"] == r["submission_id"] for r in records)


async def test_without_dlq_rejections_are_counted_and_deleted(
    emulator: Emulator, world: World, daemon: Any
) -> None:
    """DLQ_URL unset: rejected submissions are logged, counted and removed from the queue."""
    await asyncio.to_thread(
        send_bodies, emulator, world.queue_url, ["garbage", encode(submission())]
    )
    running = await daemon(settings_for(world, dlq_url=None))
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    assert await running.stop() == 0
    assert (
        running.metric("event_processor_submissions_rejected_total", {"reason": "invalid_body"})
        == 1
    )
    assert await asyncio.to_thread(drain_queue, emulator, world.dlq_url) == []


async def test_metrics_and_probes_are_served(emulator: Emulator, world: World, daemon: Any) -> None:
    """/metrics exposes our names; /healthz is 200; /readyz is 200 while running."""
    running = await daemon(settings_for(world, metrics_port=free_port()))
    base = f"http://127.0.0.1:{running.metrics_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
            assert "event_processor_in_flight_submissions" in text
            assert "event_processor_messages_received_total" in text
    assert await running.stop() == 0


async def test_hostile_bodies_are_rejected_and_the_loop_keeps_going(
    emulator: Emulator, world: World, daemon: Any
) -> None:
    """Deep nesting, invalid UTF-8, huge fields and many events: rejections, never a stall."""
    huge_cmdl = submission({"new_process": [new_process(cmdl="x" * 200_000)]})
    many = submission({"network_connection": [network_connection()] * 3000})
    hostile = [
        "[" * 50_000 + "]" * 50_000,  # nesting far past any parser's limit
        base64.b64encode(b'{"submission_id": "\xff\xfe"}').decode(),  # invalid UTF-8
        "\u0000\u0001\u0002 control characters",
        '{"submission_id": ' + "9" * 5000 + "}",
    ]
    # Parses (orjson allows 1,024 levels) but the event is 1,000 lists deep: it must still
    # reach the DLQ as a rejected event, not crash the encoder that writes the dead letter.
    # (Written as text: Python's own encoders refuse that depth.)
    shell = json.dumps(submission({"new_process": ["DEEP", new_process()]}))
    deep_event = shell.replace('"DEEP"', "[" * 1000 + "]" * 1000)
    valid = [encode(huge_cmdl), encode(many), encode(submission()), deep_event]
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, hostile + valid)
    running = await daemon(settings_for(world))
    # `many`'s 3,000 records go one after another (one in flight per lane): 3,000 round trips
    # to the emulator, 25-31 s on a 2-core machine, beyond the default deadline.
    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
        timeout_s=120,
    )
    assert await running.stop() == 0
    records = await asyncio.to_thread(stream_records, emulator, world)
    assert check_order(records) == expected_sequences(valid)
    assert len(records) == 1 + 3000 + 3 + 1
    dead = await asyncio.to_thread(drain_queue, emulator, world.dlq_url)
    whole = sorted(m["Body"] for m in dead if m["Body"] in hostile)
    assert whole == sorted(hostile)
    [letter] = [read_letter(m["Body"]) for m in dead if m["Body"] not in hostile]
    assert letter is not None
    [entry] = letter.events
    assert entry.reason == "event_not_an_object"


async def test_a_body_of_a_hundred_thousand_invalid_events_costs_a_few_letters(
    emulator: Emulator, world: World, daemon: Any
) -> None:
    """10^5 invalid events in one body: a few packed letters list every one; its valid event lands."""
    events = {"new_process": [1, {}] * 50_000 + [new_process()]}
    body = orjson.dumps(submission(events)).decode()
    assert len(body) < 1024 * 1024
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, [body])
    running = await daemon(settings_for(world))
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))
    assert await running.stop() == 0
    records = await asyncio.to_thread(stream_records, emulator, world)
    assert [r["sequence"] for r in records] == [100_000]
    dead = await asyncio.to_thread(drain_queue, emulator, world.dlq_url)
    assert 1 <= len(dead) <= 3, "packed: a few letters, not one per event"
    letters = [read_letter(m["Body"]) for m in dead]
    entries = sorted(e.sequence for letter in letters if letter is not None for e in letter.events)
    assert entries == list(range(100_000))
    assert (
        running.metric("event_processor_events_rejected_total", {"reason": "event_not_an_object"})
        == 50_000
    )
    assert (
        running.metric("event_processor_events_rejected_total", {"reason": "missing_field"})
        == 50_000
    )
    assert running.metric("event_processor_dlq_messages_sent_total", {"kind": "event"}) == len(dead)
    assert running.metric("event_processor_memory_budget_used_bytes") == 0
