"""The memory budget's admission rules (pure logic: no AWS)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Gauge

from event_processor.pipeline.admission import Hold, MemoryBudget
from tests.helpers import eventually


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
