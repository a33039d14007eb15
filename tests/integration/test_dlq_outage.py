"""A DLQ outage against the emulator behind the fault proxy: valid data is published once and
never redriven whole; every rejection reaches the DLQ once it is back.

The worlds redrive after 2 or 3 receives and hide a message for 2 s, so that without the
heartbeat's hold a few seconds of outage would redeliver (and republish) every submission
waiting for the DLQ, then move it whole to the DLQ.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from devworld.emulator import Emulator, World
from devworld.faultproxy import QUEUE_DOWN, FaultProxy
from devworld.verify import expected_sequences
from event_processor.contract.letters import KIND_SUBMISSION, letter_kind, read_letter
from tests.conftest import FAST_POLICY, settings_for
from tests.factories import encode, fleet_like, network_connection, new_process, submission
from tests.helpers import (
    check_order,
    drain_queue,
    eventually,
    queue_depth,
    send_bodies,
    stream_records,
)

VISIBILITY_S = 2
# Two rejected events in each: one without its user, one that is no object.
MIXED_EVENTS = {
    "new_process": [new_process(), {"cmdl": "x"}, 7, new_process("bash", "root")],
    "network_connection": [network_connection()],
}
MIXED_REJECTED = 2
RECEIVED = "event_processor_messages_received_total"
SUBMISSIONS = "event_processor_submissions_total"


def bodies_for(seed: int) -> tuple[list[str], list[str], list[str]]:
    """(valid only, valid with rejected events, rejected whole)."""
    rng = random.Random(seed)
    valid = [encode(fleet_like(rng)) for _ in range(12)]
    mixed = [encode(submission(MIXED_EVENTS)) for _ in range(4)]
    junk = [f"not a submission {n}" for n in range(2)]
    return valid, mixed, junk


def dead_letters(emulator: Emulator, world: World) -> tuple[int, int, list[dict[str, Any]]]:
    """(submissions rejected whole, rejected events, messages without a reason) in the DLQ."""
    whole = events = 0
    redriven: list[dict[str, Any]] = []
    for message in drain_queue(emulator, world.dlq_url):
        attributes = message.get("MessageAttributes", {})
        if "reason" not in attributes:
            redriven.append(message)  # moved by SQS's redrive policy, not sent by us
        elif letter_kind(message["Body"], attributes) == KIND_SUBMISSION:
            whole += 1
        else:
            letter = read_letter(message["Body"])
            assert letter is not None
            events += len(letter.events)
    return whole, events, redriven


async def _depth(emulator: Emulator, world: World) -> int:
    return await asyncio.to_thread(queue_depth, emulator, world.queue_url)


async def test_a_dlq_outage_holds_the_letters_and_publishes_every_valid_event_once(
    emulator: Emulator,
    make_world: Callable[..., World],
    proxy: FaultProxy,
    daemon: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The DLQ down for several visibility timeouts: valid-only traffic flows meanwhile, the
    messages with letters are held, nothing is published twice or redriven whole."""
    caplog.set_level(logging.WARNING, logger="event_processor")
    world = make_world(visibility_timeout_s=VISIBILITY_S, max_receive_count=2)
    running = await daemon(
        settings_for(world, endpoint_url=proxy.endpoint_url, visibility_timeout=VISIBILITY_S)
    )
    valid, mixed, junk = bodies_for(21)
    # Taken down once started: start-up reads the DLQ's attributes.
    proxy.configure(queues_down=frozenset({world.dlq_url}))
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, valid + mixed + junk)

    # Valid-only submissions are published and deleted while the DLQ is down; the others
    # (the mixed ones' valid events published too) wait for it.
    expected = expected_sequences(valid + mixed)
    await eventually(
        lambda: asyncio.to_thread(lambda: check_order(stream_records(emulator, world)) == expected),
        timeout_s=30,
    )
    # Down once a call failed, botocore's own attempts included.
    await eventually(lambda: running.metric("event_processor_dlq_up") == 0, timeout_s=30)
    held = len(mixed) + len(junk)
    outage_began = time.monotonic()
    while time.monotonic() - outage_began < 4 * VISIBILITY_S:
        await asyncio.sleep(0.5)  # the outage is the scenario: time passing is the point
        assert await _depth(emulator, world) == held
        assert running.metric("event_processor_dlq_submissions_waiting") == held
    assert proxy.injected(QUEUE_DOWN) > 0
    assert running.metric(RECEIVED) == len(valid) + held, "a held message was received again"
    assert running.metric("event_processor_visibility_extensions_total") >= held

    proxy.configure(queues_down=frozenset())
    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
        timeout_s=30,
    )
    assert running.metric("event_processor_dlq_up") == 1
    assert running.metric("event_processor_dlq_letters_waiting") == 0
    assert await running.stop() == 0

    records = await asyncio.to_thread(stream_records, emulator, world)
    assert check_order(records) == expected
    assert len(records) == sum(len(s) for s in expected.values()), "published twice"
    whole, events, redriven = await asyncio.to_thread(dead_letters, emulator, world)
    assert redriven == [], "a message was redriven whole by SQS"
    assert (whole, events) == (len(junk), MIXED_REJECTED * len(mixed))
    actions = [getattr(r, "action", None) for r in caplog.records]
    assert (actions.count("dlq_down"), actions.count("dlq_up")) == (1, 1)
    assert running.metric(SUBMISSIONS, {"outcome": "failed"}) == 0


async def test_a_dlq_outage_longer_than_the_letters_deadline_leaves_the_message_for_redelivery(
    emulator: Emulator,
    make_world: Callable[..., World],
    proxy: FaultProxy,
    daemon: Any,
) -> None:
    """Past letters_deadline_s from its receive, a held submission is left for redelivery:
    its valid events are published once more, its rejections still reach the DLQ."""
    deadline_s = 4.0
    world = make_world(visibility_timeout_s=VISIBILITY_S, max_receive_count=3)
    running = await daemon(
        settings_for(world, endpoint_url=proxy.endpoint_url, visibility_timeout=VISIBILITY_S),
        dataclasses.replace(FAST_POLICY, letters_deadline_s=deadline_s),
    )
    _, mixed, junk = bodies_for(22)
    proxy.configure(queues_down=frozenset({world.dlq_url}))
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, mixed + junk)
    held = len(mixed) + len(junk)

    # Each gives up at its deadline and is received again once its visibility runs out.
    await eventually(lambda: running.metric(SUBMISSIONS, {"outcome": "failed"}) >= held, 30)
    await eventually(lambda: running.metric(RECEIVED) >= 2 * held, timeout_s=30)
    proxy.configure(queues_down=frozenset())
    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
        timeout_s=30,
    )
    assert await running.stop() == 0

    records = await asyncio.to_thread(stream_records, emulator, world)
    expected = expected_sequences(mixed)
    assert check_order(records) == expected
    published_once = sum(len(s) for s in expected.values())
    # Once per receive: the first, and the redelivery after the deadline.
    assert len(records) >= 2 * published_once
    whole, events, redriven = await asyncio.to_thread(dead_letters, emulator, world)
    assert redriven == [], "redriven whole within maxReceiveCount deadlines"
    assert whole >= len(junk)
    assert events >= MIXED_REJECTED * len(mixed)
