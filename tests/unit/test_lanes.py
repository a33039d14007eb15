"""The ready lanes' order and what a request takes from them (pure logic: no sink, no network)."""

from __future__ import annotations

import asyncio

from event_processor import constants
from event_processor.pipeline.lanes import Lane, ListedRecords, ReadyLanes
from tests.unit.test_sink import records


def open_lane(
    ready: ReadyLanes, name: str, received_at: float, count: int = 1, size: int = 10
) -> Lane:
    """A lane of `count` records of `size` data bytes, partition key `name`, opened in `ready`."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    return ready.open(ListedRecords(records(name, count, size)), done, received_at, name)


async def test_the_oldest_submission_goes_first_and_ties_go_in_the_order_opened() -> None:
    """Heads come out by received_at, then by the order the lanes were opened."""
    ready = ReadyLanes()
    for name, at in [("c0", 3.0), ("a1", 1.0), ("b0", 2.0), ("a2", 1.0)]:
        open_lane(ready, name, at)
    batch, nbytes = ready.take(10, constants.PUT_RECORDS_MAX_BYTES, first_always=True)
    assert [lane.submission_id for lane in batch] == ["a1", "a2", "b0", "c0"]
    assert nbytes == 4 * 12  # each 10 bytes of data and a 2-character key
    assert len(ready) == 0


async def test_a_take_stops_at_its_limit_and_its_bytes() -> None:
    """At most `limit` heads and `max_bytes` together; the rest stay ready, in order."""
    ready = ReadyLanes()
    for n in range(5):
        open_lane(ready, f"l{n}", float(n))
    batch, _ = ready.take(2, constants.PUT_RECORDS_MAX_BYTES, first_always=True)
    assert [lane.submission_id for lane in batch] == ["l0", "l1"]
    batch, nbytes = ready.take(10, 25, first_always=True)
    assert [lane.submission_id for lane in batch] == ["l2", "l3"]
    assert nbytes == 24
    assert len(ready) == 1


async def test_a_head_larger_than_the_room_goes_alone_only_when_told() -> None:
    """A head over `max_bytes` is taken alone with first_always, and left ready without it."""
    ready = ReadyLanes()
    open_lane(ready, "big", 0.0, size=100)
    assert ready.take(10, 50, first_always=False) == ([], 0)
    batch, nbytes = ready.take(10, 50, first_always=True)
    assert [lane.submission_id for lane in batch] == ["big"]
    assert nbytes == 103


async def test_a_lane_pushed_back_keeps_its_age_and_abandoned_lanes_are_dropped() -> None:
    """A retried lane goes before younger ones; a lane abandoned while ready is never taken."""
    ready = ReadyLanes()
    old = open_lane(ready, "old", 0.0, count=2)
    [taken], _ = ready.take(1, constants.PUT_RECORDS_MAX_BYTES, first_always=True)
    assert taken is old
    gone = open_lane(ready, "gone", 1.0)
    open_lane(ready, "young", 2.0)
    ready.push(old)
    gone.done.cancel()
    batch, _ = ready.take(10, constants.PUT_RECORDS_MAX_BYTES, first_always=True)
    assert [lane.submission_id for lane in batch] == ["old", "young"]
    open_lane(ready, "left", 3.0)
    ready.abandon()
    assert len(ready) == 0
