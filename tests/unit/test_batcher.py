"""Natural batching of SQS batch calls, and the in-flight bound."""

from __future__ import annotations

import asyncio

import pytest

from event_processor.errors import BatchEntryFailed
from event_processor.pipeline.batcher import Batcher
from event_processor.pipeline.worker import Capacity
from tests.helpers import eventually


async def test_concurrent_entries_coalesce_into_full_batches() -> None:
    """While the single call slot is busy, entries pile up and go ten at a time."""
    calls: list[list[int]] = []
    gate = asyncio.Event()
    first_call = asyncio.Event()

    async def send(batch: list[int]) -> list[BaseException | None]:
        calls.append(batch)
        first_call.set()
        await gate.wait()
        return [None] * len(batch)

    batcher: Batcher[int] = Batcher(send, max_entries=10, max_concurrent=1)
    submits = [asyncio.create_task(batcher.submit(i)) for i in range(25)]
    await first_call.wait()
    gate.set()
    await asyncio.gather(*submits)
    assert [len(c) for c in calls] == [1, 10, 10, 4]
    assert sorted(i for c in calls for i in c) == list(range(25))


async def test_per_entry_failures_reach_only_their_awaiter() -> None:
    """One failed entry raises in its own submit; its batch mates succeed."""

    async def send(batch: list[int]) -> list[BaseException | None]:
        return [BatchEntryFailed("Op", "Bad", "odd") if i % 2 else None for i in batch]

    batcher: Batcher[int] = Batcher(send, max_entries=10)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType", "BatchEntryFailed"] * 2


async def test_byte_cap_splits_batches() -> None:
    """Entries whose sizes add past the cap go in separate calls."""
    calls: list[list[int]] = []
    gate = asyncio.Event()
    first_call = asyncio.Event()

    async def send(batch: list[int]) -> list[BaseException | None]:
        calls.append(batch)
        first_call.set()
        await gate.wait()
        return [None] * len(batch)

    batcher: Batcher[int] = Batcher(
        send, max_entries=10, max_bytes=100, size_of=lambda i: 40, max_concurrent=1
    )
    submits = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
    await first_call.wait()
    gate.set()
    await asyncio.gather(*submits)
    assert [len(c) for c in calls] == [1, 2, 2]


async def test_call_error_fails_the_whole_batch() -> None:
    """An exception from the call is raised to every entry of that batch."""

    async def send(batch: list[int]) -> list[BaseException | None]:
        raise RuntimeError("boom")

    batcher: Batcher[int] = Batcher(send, max_entries=10)
    with pytest.raises(RuntimeError, match="boom"):
        await batcher.submit(1)


async def test_capacity_blocks_at_the_bound_and_partially_grants() -> None:
    """Receivers get at most what is free and wait when nothing is."""
    capacity = Capacity(12)
    assert await capacity.acquire(10) == 10
    assert await capacity.acquire(10) == 2
    waiter = asyncio.create_task(capacity.acquire(10))
    # Waiting: it has cleared the event it waits on (release must wake it, not pre-empt it).
    await eventually(lambda: not capacity._available.is_set(), timeout_s=5, interval_s=0.001)
    assert not waiter.done()
    capacity.release(3)
    assert await asyncio.wait_for(waiter, timeout=1) == 3


async def test_a_call_every_awaiter_left_is_cancelled_when_dropping_abandoned_batches() -> None:
    """drop_abandoned: once every awaiter of a batch gave up, its call (a long retry) stops,
    and close() has nothing left to wait for; a batch still awaited goes on."""
    started: list[list[int]] = []
    stopped: list[list[int]] = []
    gate = asyncio.Event()

    async def send(batch: list[int]) -> list[BaseException | None]:
        started.append(batch)
        try:
            await gate.wait()  # a DLQ that keeps failing: retries without end
        except asyncio.CancelledError:
            stopped.append(batch)
            raise
        return [None] * len(batch)

    batcher: Batcher[int] = Batcher(send, max_entries=2, drop_abandoned=True)
    # [1] goes alone at once; [2, 3] as a full batch; 4 waits for a call to come back.
    submits = {i: asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3, 4)}
    await eventually(lambda: started == [[1], [2, 3]], timeout_s=5, interval_s=0.001)
    submits[2].cancel()
    await eventually(submits[2].done, timeout_s=5, interval_s=0.001)
    assert stopped == [], "3 still waits for its batch"
    submits[3].cancel()
    await eventually(lambda: stopped == [[2, 3]], timeout_s=5, interval_s=0.001)
    gate.set()
    await asyncio.gather(submits[1], submits[4])
    await asyncio.wait_for(batcher.close(), timeout=5)
    assert started == [[1], [2, 3], [4]]
    assert stopped == [[2, 3]]
