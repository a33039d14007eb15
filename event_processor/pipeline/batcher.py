"""Coalesce concurrent single-entry requests into SQS batch calls, without timers.

"Natural" batching: full batches go at once, up to `max_concurrent` calls; a partial batch
goes only while fewer than `partial_concurrent` calls are out. So when idle an entry leaves
at once, and under load entries pile up behind the calls in flight and leave in full
batches: fewer, fuller calls, and nothing waits on a linger timer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from event_processor.errors import BatchEntryFailed, is_retriable
from event_processor.retry import Backoff

if TYPE_CHECKING:
    from event_processor.metrics import Metrics
    from event_processor.retry import RetryPolicy

T = TypeVar("T")

# The send callable returns one outcome per entry, in order: None for success, or the
# exception that entry's awaiter should raise.
SendBatch = Callable[[list[T]], Awaitable[list[BaseException | None]]]


class Batcher(Generic[T]):
    def __init__(
        self,
        send: SendBatch[T],
        *,
        max_entries: int,
        max_bytes: int | None = None,
        size_of: Callable[[T], int] | None = None,
        max_concurrent: int = 4,
        partial_concurrent: int = 1,
        drop_abandoned: bool = False,
    ) -> None:
        """`drop_abandoned`: cancel a call (retries included) once every awaiter of its batch
        is gone, for calls that retry for long and are worth nothing to nobody (dead letters
        of released submissions). Off for deletes: one on the wire had better land."""
        self._send = send
        self._drop_abandoned = drop_abandoned
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._size_of = size_of
        self._max_concurrent = max_concurrent
        self._partial_concurrent = partial_concurrent
        self._pending: deque[tuple[T, asyncio.Future[None]]] = deque()
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, entry: T) -> None:
        """Resolve once `entry` succeeded; raise what its batch call reported for it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, future))
        self._kick()
        await future

    async def submit_many(self, entries: list[T]) -> None:
        await asyncio.gather(*(self.submit(entry) for entry in entries))

    def _take(self) -> list[tuple[T, asyncio.Future[None]]]:
        batch: list[tuple[T, asyncio.Future[None]]] = []
        total = 0
        while self._pending and len(batch) < self._max_entries:
            entry, future = self._pending[0]
            if future.done():  # its awaiter was cancelled: nothing to send
                self._pending.popleft()
                continue
            if self._max_bytes is not None and self._size_of is not None:
                size = self._size_of(entry)
                # An entry bigger than the cap still goes, alone; SQS will judge it.
                if batch and total + size > self._max_bytes:
                    break
                total += size
            batch.append(self._pending.popleft())
        return batch

    def _kick(self) -> None:
        while self._pending and self._active < self._max_concurrent:
            if len(self._pending) < self._max_entries and self._active >= self._partial_concurrent:
                return  # a partial batch waits for a call to come back, and grows meanwhile
            batch = self._take()
            if not batch:
                return
            self._active += 1
            task = asyncio.create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        call = self._send([entry for entry, _ in batch])
        sending: asyncio.Future[list[BaseException | None]] | None = None
        if self._drop_abandoned:
            # A task of its own, so that it can be cancelled without cancelling this one.
            sending = asyncio.ensure_future(call)
            _cancel_when_abandoned(sending, [future for _, future in batch])
        try:
            outcomes = await (call if sending is None else sending)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            me = asyncio.current_task()
            if sending is not None and sending.cancelled() and me and not me.cancelling():
                return  # abandoned by every awaiter: nothing to hand out
            raise
        except Exception as exc:  # handed to every awaiter of the batch, none is swallowed
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if outcome is None:
                    future.set_result(None)
                else:
                    future.set_exception(outcome)
        finally:
            self._active -= 1
            self._kick()

    async def close(self) -> None:
        """Wait for calls already under way; entries not yet sent are failed as cancelled."""
        while self._pending:
            _, future = self._pending.popleft()
            future.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _cancel_when_abandoned(call: asyncio.Future[Any], futures: list[asyncio.Future[None]]) -> None:
    """Cancel `call` once every one of `futures` is cancelled (their awaiters gave up)."""
    left = len(futures)

    def gone(future: asyncio.Future[None]) -> None:
        nonlocal left
        if future.cancelled():
            left -= 1
            if left == 0 and not call.done():
                call.cancel()

    for future in futures:
        future.add_done_callback(gone)


class RetriableEntries(Exception):
    """Some batch entries failed with a retriable code; only they are sent again."""


async def retry_entries(
    operation: str,
    items: list[T],
    make_entry: Callable[[int, T], Any],
    call: Callable[[list[Any]], Awaitable[Any]],
    *,
    policy: RetryPolicy,
    metrics: Metrics,
) -> list[BaseException | None]:
    """Run an SQS batch call, retrying only the entries that failed retriably.

    A 200 response can still carry failed entries; each is checked. SenderFault entries
    (a stale receipt handle, an oversized body) will not heal and fail at once.

    The policy's strategies (attempts, deadline, backoff) decide each retry through a
    Backoff made at the first failure: most calls succeed at once, and a tenacity
    controller made for each of them costs CPU and leaves reference cycles for the
    collector on every call.
    """
    outcomes: dict[int, BaseException | None] = {}
    remaining = dict(enumerate(items))
    began = time.monotonic()
    backoff: Backoff | None = None
    while True:
        try:
            response = await call([make_entry(i, item) for i, item in remaining.items()])
            for ok in response.get("Successful", []):
                outcomes[int(ok["Id"])] = None
                remaining.pop(int(ok["Id"]), None)
            for bad in response.get("Failed", []):
                index = int(bad["Id"])
                if bad.get("SenderFault"):
                    outcomes[index] = BatchEntryFailed(
                        operation, bad.get("Code", ""), bad.get("Message", "")
                    )
                    remaining.pop(index, None)
            if remaining:
                raise RetriableEntries(f"{len(remaining)} {operation} entries failed")
            break
        except (RetriableEntries, BotoCoreError, ClientError) as exc:
            delay = None
            if isinstance(exc, RetriableEntries) or is_retriable(exc):
                if backoff is None:
                    backoff = Backoff(policy.retrying(), started_at=began)
                delay = backoff.next_delay()
            if delay is None:
                # Not retriable, or the policy gave up: each remaining entry carries the
                # reason to its awaiter.
                for index in remaining:
                    outcomes[index] = BatchEntryFailed(operation, type(exc).__name__, str(exc))
                break
            metrics.retries.labels(operation).inc()
            await asyncio.sleep(delay)
    return [outcomes.get(i) for i in range(len(items))]
