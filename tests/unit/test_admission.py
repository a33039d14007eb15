"""The memory budget's admission rules, and what Admission reserves and holds at each step of a
submission (pure logic: no AWS)."""

from __future__ import annotations

import asyncio
import sys

import pytest
from prometheus_client import CollectorRegistry, Gauge

from event_processor.constants import MESSAGE_OVERHEAD_BYTES
from event_processor.pipeline.admission import Admission, Hold, MemoryBudget
from tests.factories import received_message
from tests.helpers import eventually

MAX_BODY = 1000  # the queue's MaximumMessageSize in these tests
EACH = MAX_BODY + MESSAGE_OVERHEAD_BYTES  # what a receive reserves per message


async def queued(*holds: Hold) -> None:
    """Wait, with a deadline, until every hold is in the budget's queue of waiters."""
    await eventually(lambda: all(h.waiting for h in holds), timeout_s=5, interval_s=0.001)


async def test_grow_within_the_limit_is_immediate() -> None:
    """Holds that fit are granted at once and counted in used_bytes."""
    budget = MemoryBudget(100)
    a, b = Hold(), Hold()
    await budget.grow(a, 60)
    await budget.grow(b, 40)
    assert budget.used_bytes == 100
    budget.release(a)
    assert budget.used_bytes == 40


async def test_a_waiter_is_let_in_when_room_frees() -> None:
    """A hold that does not fit waits until another hold shrinks."""
    budget = MemoryBudget(100)
    a, b = Hold(), Hold()
    await budget.grow(a, 80)
    waiter = asyncio.create_task(budget.grow(b, 50))
    await queued(b)
    assert not waiter.done()
    budget.resize(a, 50)
    await asyncio.wait_for(waiter, 1)
    assert budget.used_bytes == 100


async def test_waiters_are_served_in_turn() -> None:
    """A small request does not overtake a large one queued before it."""
    budget = MemoryBudget(100)
    a, big, small = Hold(), Hold(), Hold()
    await budget.grow(a, 90)
    first = asyncio.create_task(budget.grow(big, 60))
    await queued(big)
    second = asyncio.create_task(budget.grow(small, 5))
    await queued(small)
    assert not second.done(), "the small one would fit, but it came second"
    assert not budget.try_resize(Hold(), 1), "nobody jumps the queue"
    budget.release(a)
    await asyncio.wait_for(asyncio.gather(first, second), 1)
    assert (big.nbytes, small.nbytes) == (60, 5)


async def test_larger_than_the_budget_goes_alone() -> None:
    """A hold bigger than the whole budget is granted once nothing else is held."""
    budget = MemoryBudget(100)
    a, huge = Hold(), Hold()
    await budget.grow(a, 10)
    waiter = asyncio.create_task(budget.grow(huge, 500))
    await queued(huge)
    assert not waiter.done()
    budget.release(a)
    await asyncio.wait_for(waiter, 1)
    assert budget.used_bytes == 500


async def test_waiters_holding_bytes_do_not_deadlock() -> None:
    """Two waiters that each hold a body: the first goes once only waiters hold anything."""
    budget = MemoryBudget(100)
    active, a, b = Hold(), Hold(), Hold()
    await budget.grow(active, 50)
    await budget.grow(a, 20)
    await budget.grow(b, 20)
    grow_a = asyncio.create_task(budget.grow(a, 90))
    grow_b = asyncio.create_task(budget.grow(b, 90))
    await queued(a, b)
    budget.release(active)
    await asyncio.wait_for(grow_a, 1)
    assert not grow_b.done()
    budget.release(a)
    await asyncio.wait_for(grow_b, 1)


async def test_the_last_holder_to_wait_lets_the_first_waiter_go() -> None:
    """Two holds, each with a body: the first waits for room the second holds, then the second
    waits too. Only waiters hold anything now, so the first goes, alone; nothing else will
    ever free room (the daemon stalled here: four 853 KB bodies of 20,000 events in an 8 MiB
    budget, on a FIFO queue, nothing published for 8 minutes)."""
    budget = MemoryBudget(100)
    a, b = Hold(), Hold()
    await budget.grow(a, 40)
    await budget.grow(b, 40)
    grow_a = asyncio.create_task(budget.grow(a, 90))
    await queued(a)
    grow_b = asyncio.create_task(budget.grow(b, 90))
    await asyncio.wait_for(grow_a, 1)
    assert budget.used_bytes == 130
    assert not grow_b.done()
    budget.release(a)
    await asyncio.wait_for(grow_b, 1)
    assert budget.used_bytes == 90


async def test_parked_bytes_count_as_a_waiters() -> None:
    """A hold parked behind another submission (a FIFO group's turn) does not keep a waiter
    out: with every other byte parked, the first waiter goes alone; unparked, it counts again."""
    budget = MemoryBudget(100)
    parked, head, late = Hold(), Hold(), Hold()
    await budget.grow(parked, 80)
    await budget.grow(head, 10)
    grow = asyncio.create_task(budget.grow(head, 50))
    await queued(head)
    assert not grow.done()
    with budget.parked(parked):
        await asyncio.wait_for(grow, 1)
    assert budget.used_bytes == 130
    assert not budget.try_resize(late, 1), "unparked, its bytes are held again"


async def test_cancelled_waiter_leaves_its_hold_and_the_queue() -> None:
    """Cancelling a waiting grow keeps the hold's old size and lets the next waiter in."""
    budget = MemoryBudget(100)
    a, b, c = Hold(), Hold(), Hold()
    await budget.grow(a, 90)
    await budget.grow(b, 10)
    stuck = asyncio.create_task(budget.grow(b, 100))
    await queued(b)
    behind = asyncio.create_task(budget.grow(c, 5))
    await queued(c)
    stuck.cancel()
    await asyncio.gather(stuck, return_exceptions=True)
    assert b.nbytes == 10
    budget.resize(a, 80)
    await asyncio.wait_for(behind, 1)
    assert budget.used_bytes == 95


async def test_resize_forces_and_shrinking_wakes() -> None:
    """resize() takes what is already allocated even over the limit; shrinking lets waiters in."""
    budget = MemoryBudget(100)
    a, b = Hold(), Hold()
    budget.resize(a, 150)
    assert budget.used_bytes == 150
    waiter = asyncio.create_task(budget.grow(b, 30))
    await queued(b)
    assert not waiter.done()
    budget.resize(a, 60)
    await asyncio.wait_for(waiter, 1)


async def test_the_used_gauge_reads_the_budget_when_scraped() -> None:
    """The gauge is not set at each change: every scrape reads what is held at that moment,
    through grants, a waiter let in, and releases."""
    registry = CollectorRegistry()
    gauge = Gauge("used_bytes", "bytes held", registry=registry)
    budget = MemoryBudget(100, gauge)

    def scraped() -> float | None:
        return registry.get_sample_value("used_bytes")

    a, b = Hold(), Hold()
    assert scraped() == 0
    await budget.grow(a, 70)
    assert scraped() == 70
    waiting = asyncio.create_task(budget.grow(b, 50))
    await queued(b)
    assert scraped() == 70  # a waiter holds nothing yet
    budget.resize(a, 10)
    await waiting
    assert scraped() == 60
    budget.release(a)
    budget.release(b)
    assert scraped() == 0


# --- Admission: the steps of a submission's walk -------------------------------------------


def admission(messages: int) -> tuple[Admission, CollectorRegistry]:
    """An Admission over a budget of room for `messages` of the largest bodies."""
    registry = CollectorRegistry()
    reserved = Gauge("reserved_bytes", "reserved by receives", registry=registry)
    return Admission(MemoryBudget(messages * EACH), MAX_BODY, reserved), registry


async def test_a_receive_reserves_a_whole_batch_within_the_budget() -> None:
    """Ten wanted, room for four: the reservation is four of the largest bodies, and the
    reserved gauge reads them."""
    door, registry = admission(4)
    reservation = await door.reserve(10)
    assert reservation.count == 4
    assert reservation.hold.nbytes == door.budget.used_bytes == 4 * EACH
    assert registry.get_sample_value("reserved_bytes") == 4 * EACH
    door.unreserve(reservation)
    assert door.budget.used_bytes == 0
    assert registry.get_sample_value("reserved_bytes") == 0


async def test_a_reservation_waits_for_the_receivers_share_to_free() -> None:
    """A second receive that does not fit beside the first waits until the first unreserves,
    rather than asking for a smaller batch, and without queueing ahead of work in flight."""
    door, _ = admission(4)
    first = await door.reserve(3)
    second = asyncio.create_task(door.reserve(3))
    await asyncio.sleep(0)  # its first step runs to the wait for the share (a step, not a timing)
    assert not second.done()
    # It waits outside the budget's queue: work in flight that fits is not held behind it.
    assert door.keep_parsed(Hold(), EACH // 2)
    door.unreserve(first)
    reservation = await asyncio.wait_for(second, 5)
    assert reservation.count == 3


async def test_a_cancelled_reservation_gives_its_share_back() -> None:
    """Cancelled while it waits for the budget: nothing is held, and the next one goes."""
    door, _ = admission(4)
    other = Hold()
    door.budget.resize(other, 4 * EACH)  # work in flight holds the whole budget
    waiting = asyncio.create_task(door.reserve(2))
    await asyncio.sleep(0)  # its first step runs to the budget's queue (a step, not a timing)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    door.budget.release(other)
    assert door.budget.used_bytes == 0
    reservation = await asyncio.wait_for(door.reserve(4), 5)
    assert reservation.count == 4


async def test_admitted_messages_hold_their_bodies_and_the_reservation_goes_back() -> None:
    """Each received message holds its body (as Python holds it) and the Message around it;
    the rest of the reservation is freed."""
    door, registry = admission(4)
    reservation = await door.reserve(4)
    messages = [received_message("a" * 300), received_message("\u00e9" * 10)]
    holds = door.admit(reservation, messages)
    expected = [sys.getsizeof(m.body) + MESSAGE_OVERHEAD_BYTES for m in messages]
    assert [h.nbytes for h in holds] == expected
    assert door.budget.used_bytes == sum(expected)
    assert registry.get_sample_value("reserved_bytes") == 0
    for hold in holds:
        door.finished(hold)
    assert door.budget.used_bytes == 0


async def test_a_parse_that_does_not_fit_waits_in_turn_then_is_kept() -> None:
    """What parsing left replaces the body only when it fits; otherwise the hold waits for
    room, in turn, and then holds it."""
    door, _ = admission(2)
    hold, other = Hold(), Hold()
    door.budget.resize(hold, 100)
    door.budget.resize(other, 2 * EACH - 100)
    assert not door.keep_parsed(hold, 500)
    assert hold.nbytes == 100, "a refused parse leaves the hold as it was"
    assert door.keep_parsed(hold, 50), "shrinking always fits"
    waiting = asyncio.create_task(door.wait_to_parse(hold, 500))
    await eventually(lambda: hold.waiting, timeout_s=5, interval_s=0.001)
    door.landed(other, 0)
    await asyncio.wait_for(waiting, 5)
    assert hold.nbytes == 500


async def test_landed_parts_let_go_of_their_bytes_even_over_the_limit() -> None:
    """landed() sets what is left at once, whether it fits or not: the memory is taken."""
    door, _ = admission(1)
    hold = Hold()
    door.landed(hold, 3 * EACH)
    assert door.budget.used_bytes == 3 * EACH
    door.landed(hold, 10)
    assert door.budget.used_bytes == 10


async def test_a_submission_waiting_for_its_turn_counts_as_a_waiter() -> None:
    """While a FIFO submission waits for its group's earlier one, the first waiter may go
    alone past its bytes; after the wait they count again."""
    door, _ = admission(1)
    parked, head = Hold(), Hold()
    door.budget.resize(parked, EACH)
    growing = asyncio.create_task(door.wait_to_parse(head, EACH))
    await eventually(lambda: head.waiting, timeout_s=5, interval_s=0.001)
    with door.waiting_for_turn(parked):
        await asyncio.wait_for(growing, 5)
    assert not door.keep_parsed(Hold(), 1)
