"""Order as the stream reports it: the daemon checks each lane's acknowledged sequence numbers
against the fault proxy rewriting PutRecords answers (the records themselves are stored)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from devworld import faultproxy
from devworld.emulator import Emulator, World
from devworld.faultproxy import FaultProxy
from tests.conftest import settings_for
from tests.factories import encode, new_process, submission
from tests.helpers import check_order, eventually, queue_depth, send_bodies, stream_records

SCENARIO_TIMEOUT_S = 30.0
EVENTS = 6  # records of the one submission: one lane, one record in flight at a time


def lane_records(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


async def publish_one_submission(
    emulator: Emulator, world: World, proxy: FaultProxy, daemon: Any, **faults: int
) -> tuple[Any, str]:
    """One submission of EVENTS events through the daemon, behind the proxy's `faults`;
    returns the stopped daemon and the submission id once every record is stored."""
    running = await daemon(settings_for(world, endpoint_url=proxy.endpoint_url))
    proxy.configure(**faults)  # from here on: start-up's calls are not under test
    doc = submission({"new_process": [new_process(f"p{i}") for i in range(EVENTS)]})
    await asyncio.to_thread(send_bodies, emulator, world.queue_url, [encode(doc)])
    await eventually(
        lambda: running.metric("event_processor_submissions_total", {"outcome": "published"}) == 1,
        timeout_s=SCENARIO_TIMEOUT_S,
    )
    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0),
        timeout_s=SCENARIO_TIMEOUT_S,
    )
    assert await running.stop() == 0
    records = await asyncio.to_thread(stream_records, emulator, world)
    # The stream itself is in order: only the answers were rewritten.
    assert check_order(records) == {doc["submission_id"]: list(range(EVENTS))}
    return running, str(doc["submission_id"])


async def test_a_lower_sequence_number_in_the_answer_is_counted_and_logged(
    emulator: Emulator,
    world: World,
    proxy: FaultProxy,
    daemon: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The proxy answers one record below its predecessor: one violation, one WARNING naming
    the submission, the shard and both numbers, and the submission still published."""
    caplog.set_level(logging.INFO, logger="event_processor")
    running, submission_id = await publish_one_submission(
        emulator, world, proxy, daemon, sequence_inversions=1
    )
    assert proxy.injected(faultproxy.SEQUENCE_INVERTED) == 1, proxy.stats()
    assert running.metric("event_processor_order_violations_total") == 1
    assert running.metric("event_processor_lane_shard_changes_total") == 0
    [line] = lane_records(caplog, "order_violation")
    assert line.levelno == logging.WARNING
    assert line.__dict__["submission_id"] == submission_id
    assert line.__dict__["event_sequence"] == 1, (
        "the lane's second record, the first one seen again"
    )
    assert line.__dict__["shard_id"].startswith("shardId-")
    previous, current = line.__dict__["previous_sequence_number"], line.__dict__["sequence_number"]
    assert int(current) < int(previous), (previous, current)
    assert not lane_records(caplog, "lane_shard_change")


async def test_a_lane_answered_from_another_shard_is_a_shard_change_not_a_violation(
    emulator: Emulator,
    world: World,
    proxy: FaultProxy,
    daemon: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The proxy answers the lane's later records from a child shard: one shard change, logged
    at INFO with both shards, and no violation."""
    caplog.set_level(logging.INFO, logger="event_processor")
    running, submission_id = await publish_one_submission(
        emulator, world, proxy, daemon, shard_moves=1
    )
    assert proxy.injected(faultproxy.SHARD_MOVED) == 1, proxy.stats()
    assert running.metric("event_processor_lane_shard_changes_total") == 1
    assert running.metric("event_processor_order_violations_total") == 0
    [line] = lane_records(caplog, "lane_shard_change")
    assert line.levelno == logging.INFO
    assert line.__dict__["submission_id"] == submission_id
    assert line.__dict__["shard_id"] == "shardId-000000001000"
    assert line.__dict__["previous_shard_id"] != line.__dict__["shard_id"]
    assert not lane_records(caplog, "order_violation")
