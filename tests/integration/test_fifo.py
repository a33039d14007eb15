"""A FIFO source: each message group's submissions reach the stream in the order received,
invalid ones go to the FIFO DLQ with their group, and nothing overtakes a failure."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections import defaultdict
from typing import Any

import orjson

from devworld.emulator import Emulator, World
from devworld.faultproxy import FaultProxy
from devworld.verify import verify_device_order
from event_processor import constants
from tests.conftest import FAST_POLICY, settings_for
from tests.factories import encode, fleet_like, new_process, submission
from tests.helpers import (
    check_order,
    client,
    drain_queue,
    eventually,
    queue_counts,
    queue_depth,
    stream_records,
)

SCENARIO_TIMEOUT_S = 90.0


def send_in_order(emulator: Emulator, queue_url: str, grouped: list[tuple[str, str]]) -> None:
    """Send (group, body) pairs in the order given, ten at a time, each with its group and a
    deduplication id of its own; every one must be accepted."""
    sqs = client(emulator, "sqs")
    for start in range(0, len(grouped), constants.SQS_MAX_BATCH_ENTRIES):
        batch = grouped[start : start + constants.SQS_MAX_BATCH_ENTRIES]
        response = sqs.send_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {
                    "Id": str(i),
                    "MessageBody": body,
                    "MessageGroupId": group,
                    "MessageDeduplicationId": uuid.uuid4().hex,
                }
                for i, (group, body) in enumerate(batch)
            ],
        )
        assert len(response.get("Successful", [])) == len(batch), response.get("Failed")


async def test_many_devices_keep_their_order_with_invalid_ones_and_record_failures(
    emulator: Emulator, make_world: Any, proxy: FaultProxy, daemon: Any
) -> None:
    """30 devices x 10 submissions, ~5% invalid, 20% of entries failing: every valid event
    once in order, each device's submissions in send order, invalid ones in the FIFO DLQ."""
    world: World = make_world(fifo=True)
    rng = random.Random(22)
    devices = [str(uuid.uuid4()) for _ in range(30)]
    sent: dict[str, list[str]] = {d: [] for d in devices}
    expected: dict[str, list[int]] = {}
    invalid: dict[str, str] = {}  # submission id -> its device
    grouped: list[tuple[str, str]] = []
    for _ in range(10):
        for device in devices:
            doc = fleet_like(rng, device_id=device)
            if rng.random() < 0.05:
                doc["time_created"] = "not a time"  # the whole submission is rejected
                invalid[doc["submission_id"]] = device
            else:
                sent[device].append(doc["submission_id"])
                expected[doc["submission_id"]] = list(range(sum(map(len, doc["events"].values()))))
            grouped.append((device, encode(doc)))
    assert invalid, "the seed makes some invalid"

    running = await daemon(
        settings_for(world, endpoint_url=proxy.endpoint_url, max_in_flight=64),
    )
    proxy.configure(put_records_entry_failure_rate=0.2)
    await asyncio.to_thread(send_in_order, emulator, world.queue_url, grouped)
    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
        timeout_s=SCENARIO_TIMEOUT_S,
    )
    assert await running.stop() == 0
    assert running.metric("event_processor_submissions_total", {"outcome": "failed"}) == 0
    assert running.metric("event_processor_submissions_total", {"outcome": "released"}) == 0

    records = await asyncio.to_thread(stream_records, emulator, world)
    assert check_order(records) == expected
    assert len(records) == sum(map(len, expected.values())), "a record twice"
    order = verify_device_order(records, sent)
    assert order.ok, order.summary()
    assert order.pairs == sum(len(s) - 1 for s in sent.values())
    letters = await asyncio.to_thread(drain_queue, emulator, world.dlq_url)
    assert {m["Attributes"]["MessageGroupId"] for m in letters} == set(invalid.values())
    assert sorted(orjson.loads(_decoded(m["Body"]))["submission_id"] for m in letters) == sorted(
        invalid
    )
    assert {m["MessageAttributes"]["reason"]["StringValue"] for m in letters} == {"invalid_field"}


def _decoded(body: str) -> bytes:
    import base64  # noqa: PLC0415 - only the letters' bodies need it

    return base64.b64decode(body)


async def test_a_failure_in_the_middle_of_a_group_is_not_overtaken(
    emulator: Emulator, make_world: Any, proxy: FaultProxy, daemon: Any
) -> None:
    """The second of three submissions of a group fails: the third is released, not
    published, and once the fault is gone the group lands in order: 1, 2, 3."""
    world: World = make_world(fifo=True, shard_count=1, visibility_timeout_s=2)
    group = str(uuid.uuid4())
    docs = [
        submission({"new_process": [new_process(f"p{i}") for i in range(4)]}, device_id=group)
        for _ in range(3)
    ]
    failing = str(docs[1]["submission_id"])
    # Records keyed by submission, so that the proxy can fail the second one's alone.
    settings = settings_for(
        world,
        endpoint_url=proxy.endpoint_url,
        partition_key="submission_id",
        visibility_timeout=2,
    )
    policy = dataclasses.replace(FAST_POLICY, records_deadline_s=0.5)
    running = await daemon(settings, policy)
    proxy.configure(failing_partition_keys=frozenset({failing}))
    await asyncio.to_thread(
        send_in_order, emulator, world.queue_url, [(group, encode(d)) for d in docs]
    )

    def outcome(name: str) -> float:
        return float(running.metric("event_processor_submissions_total", {"outcome": name}))

    await eventually(lambda: outcome("failed") >= 1 and outcome("released") >= 1, timeout_s=30)
    assert outcome("published") == 1  # the first; the third did not overtake the second
    proxy.clear()
    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
        timeout_s=SCENARIO_TIMEOUT_S,
    )
    assert await running.stop() == 0
    records = await asyncio.to_thread(stream_records, emulator, world)
    order = [r["submission_id"] for r in sorted(records, key=lambda r: r["_seq"])]
    assert order == [str(d["submission_id"]) for d in docs for _ in range(4)]


async def test_a_redelivery_after_a_failed_delete_makes_no_second_letter(
    emulator: Emulator, make_world: Any, proxy: FaultProxy, daemon: Any
) -> None:
    """A rejected submission whose delete fails comes back and is rejected again: the FIFO
    DLQ's deduplication id (source message and part) keeps one letter, not two."""
    world: World = make_world(fifo=True, visibility_timeout_s=2)
    settings = settings_for(world, endpoint_url=proxy.endpoint_url, visibility_timeout=2)
    running = await daemon(settings)
    proxy.configure(fail_operations=frozenset({"DeleteMessageBatch"}))
    await asyncio.to_thread(
        send_in_order, emulator, world.queue_url, [("g", "!!! not a submission")]
    )
    await eventually(
        lambda: (
            running.metric("event_processor_dlq_messages_sent_total", {"kind": "submission"}) >= 2
        ),
        timeout_s=30,
    )
    proxy.clear()
    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
        timeout_s=30,
    )
    assert await running.stop() == 0
    letters = await asyncio.to_thread(drain_queue, emulator, world.dlq_url)
    assert len(letters) == 1, "one letter for one message, however often it was sent"
    assert letters[0]["Attributes"]["MessageGroupId"] == "g"


async def test_a_stop_releases_every_groups_unfinished_messages_in_order(
    emulator: Emulator, make_world: Any, proxy: FaultProxy, daemon: Any
) -> None:
    """Kinesis down, two groups in flight, a stop: all five are visible again at once, and the
    queue hands each group out again in its order."""
    world: World = make_world(fifo=True)
    settings = settings_for(world, endpoint_url=proxy.endpoint_url, shutdown_grace_seconds=1)
    running = await daemon(settings)
    proxy.configure(kinesis_down=True)
    sent = [("g", encode(submission())) for _ in range(3)] + [
        ("h", encode(submission())) for _ in range(2)
    ]
    await asyncio.to_thread(send_in_order, emulator, world.queue_url, sent)
    await eventually(lambda: running.worker.in_flight == len(sent), timeout_s=30)
    assert await running.stop() == 0
    assert (running.worker.drained.unfinished, running.worker.drained.released) == (5, 5)
    proxy.clear()
    assert await asyncio.to_thread(queue_counts, emulator, world.queue_url) == (5, 0)
    again = await asyncio.to_thread(drain_queue, emulator, world.queue_url)
    by_group: dict[str, list[str]] = defaultdict(list)
    for message in again:
        by_group[message["Attributes"]["MessageGroupId"]].append(message["Body"])
    assert by_group == {
        "g": [body for group, body in sent if group == "g"],
        "h": [body for group, body in sent if group == "h"],
    }
