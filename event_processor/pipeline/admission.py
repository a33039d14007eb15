"""The memory budget: admission by the bytes in-flight submissions hold, not only by count.

Every submission holds a `Hold` from the moment its receive is reserved until it is deleted or
released: first the body SQS may send (the queue's MaximumMessageSize, reserved before the
long poll), then the body it did send, then what parsing left (packed records, dead
letters). Waiters are served first come, first served, so a large submission waiting for room
is not overtaken by a stream of small ones. One that is larger than the whole budget still
goes, alone: when every byte held belongs to waiters, the first waiter is let through.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Gauge


class Hold:
    """Bytes one submission (or one receive's reservation) holds of the budget."""

    __slots__ = ("nbytes", "waiting")

    def __init__(self, nbytes: int = 0) -> None:
        self.nbytes = nbytes
        self.waiting = False


class MemoryBudget:
    def __init__(self, limit_bytes: int, used_gauge: Gauge | None = None) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self._waiting_bytes = 0  # held by holds that are waiting to grow
        self._waiters: deque[tuple[Hold, int, asyncio.Future[None]]] = deque()
        if used_gauge is not None:
            # Read when scraped, not set at every change: a submission resizes its hold
            # three or four times, and each set() takes the gauge's lock.
            used_gauge.set_function(lambda: self.used_bytes)

    @property
    def free_bytes(self) -> int:
        return max(0, self.limit_bytes - self.used_bytes)

    def _fits(self, hold: Hold, nbytes: int) -> bool:
        others = self.used_bytes - hold.nbytes
        # Alone: nothing is held but by waiters (and this hold), so nothing will free room.
        return others + nbytes <= self.limit_bytes or others - self._waiting_bytes <= 0

    def _set(self, hold: Hold, nbytes: int) -> None:
        self.used_bytes += nbytes - hold.nbytes
        hold.nbytes = nbytes

    def try_resize(self, hold: Hold, nbytes: int) -> bool:
        """Grow (or shrink) `hold` now if that fits and nobody waits; False leaves it as is."""
        if nbytes > hold.nbytes and (self._waiters or not self._fits(hold, nbytes)):
            return False
        self.resize(hold, nbytes)
        return True

    def resize(self, hold: Hold, nbytes: int) -> None:
        """Set `hold` to `nbytes` whether it fits or not: the memory is already taken."""
        self._set(hold, nbytes)
        if self._waiters:
            self._wake()

    async def grow(self, hold: Hold, nbytes: int) -> None:
        """Wait, in turn, until `hold` can be `nbytes`; cancelling leaves it as it was."""
        if self.try_resize(hold, nbytes):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((hold, nbytes, future))
        hold.waiting = True
        self._waiting_bytes += hold.nbytes
        try:
            await future
        finally:
            if hold.waiting:  # cancelled while queued
                hold.waiting = False
                self._waiting_bytes -= hold.nbytes
                self._wake()

    @contextmanager
    def parked(self, hold: Hold) -> Iterator[None]:
        """While `hold`'s submission waits for another one (its FIFO group's predecessor),
        its bytes count as a waiter's: they are not freed before that one finishes, so the
        first waiter (perhaps that one) may go alone rather than wait for them."""
        nbytes = hold.nbytes
        self._waiting_bytes += nbytes
        if self._waiters:
            self._wake()
        try:
            yield
        finally:
            self._waiting_bytes -= nbytes

    def release(self, hold: Hold) -> None:
        self.resize(hold, 0)

    def _wake(self) -> None:
        while self._waiters:
            hold, nbytes, future = self._waiters[0]
            if future.done():  # its waiter was cancelled
                self._waiters.popleft()
                continue
            if not self._fits(hold, nbytes):
                return
            self._waiters.popleft()
            hold.waiting = False
            self._waiting_bytes -= hold.nbytes
            self._set(hold, nbytes)
            future.set_result(None)
