"""Admission to the memory budget: by the bytes in-flight submissions hold, not only by count.

Every submission holds a `Hold` from the moment its receive is reserved until it is deleted or
released: first the body SQS may send (the queue's MaximumMessageSize, reserved before the
long poll), then the body it did send, then what parsing left (packed records, dead
letters), then what has not landed yet. Waiters are served first come, first served, so a
large submission waiting for room is not overtaken by a stream of small ones. One that is
larger than the whole budget still goes, alone: when every byte held belongs to waiters, the
first waiter is let through.

`Admission` makes those decisions, step by step of a submission's walk; the worker and the
submission's processing call it and nothing else of the budget. `MemoryBudget` under it is
the accounting: holds, the queue of waiters, and who counts as waiting.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from event_processor import constants

if TYPE_CHECKING:
    from prometheus_client import Gauge

    from event_processor.pipeline.source import Message


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
        others_waiting = self._waiting_bytes - (hold.nbytes if hold.waiting else 0)
        # Alone: nothing is held but by waiters (and this hold), so nothing will free room.
        return others + nbytes <= self.limit_bytes or others <= others_waiting

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
        # Its bytes now count as a waiter's: if they were the last held by a non-waiter, the
        # first waiter goes alone now, since nothing else would wake it.
        self._wake()
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


class Reservation:
    """What one receive reserved before its long poll: room for `count` of the largest bodies."""

    __slots__ = ("count", "hold")

    def __init__(self, hold: Hold, count: int) -> None:
        self.hold = hold
        self.count = count


class Admission:
    """The budget's one door: what a receive reserves, what each submission holds at each step."""

    def __init__(
        self,
        budget: MemoryBudget,
        max_message_bytes: int,
        reserved_gauge: Gauge | None = None,
    ) -> None:
        self.budget = budget
        # What one received message may hold before it is parsed: the largest body the
        # queue accepts (as Python holds it) and the Message around it.
        self._reserve_each = max_message_bytes + constants.MESSAGE_OVERHEAD_BYTES
        # Long polls may reserve at most this much together, so that receivers idling on an
        # empty queue leave the rest of the budget to the work that is in flight.
        self._receive_share = max(
            self._reserve_each, int(budget.limit_bytes * constants.RECEIVE_BUDGET_SHARE)
        )
        self._receive_reserved = 0  # counted before a reservation waits for the budget
        self._receive_granted = 0  # what the budget granted to reservations
        if reserved_gauge is not None:
            reserved_gauge.set_function(lambda: self._receive_granted)
        self._share_freed = asyncio.Event()

    # --- receiving (the worker) ------------------------------------------------------

    async def reserve(self, wanted: int) -> Reservation:
        """Reserve the budget for the bodies one receive of up to `wanted` messages may bring.

        A receiver asks for a whole batch (as much as the receivers' share allows) and waits
        until the share has room for it: many one-message receives would cost more calls
        than they save. Then it waits in turn for the budget itself.
        """
        each = self._reserve_each
        count = max(1, min(wanted, self._receive_share // each))
        nbytes = count * each
        while self._receive_reserved and self._receive_reserved + nbytes > self._receive_share:
            self._share_freed.clear()
            await self._share_freed.wait()
        self._receive_reserved += nbytes  # counted before the wait: other receivers see it
        hold = Hold()
        try:
            await self.budget.grow(hold, nbytes)
        except BaseException:
            self._receive_reserved -= nbytes
            self._share_freed.set()
            raise
        self._receive_granted += nbytes
        return Reservation(hold, count)

    def unreserve(self, reservation: Reservation) -> None:
        """The receive is over (or never happened): its reservation goes back."""
        hold = reservation.hold
        self._receive_reserved -= hold.nbytes
        self._receive_granted -= hold.nbytes
        self._share_freed.set()
        self.budget.release(hold)

    def admit(self, reservation: Reservation, messages: Sequence[Message]) -> list[Hold]:
        """The received messages' holds, each its body and the Message around it.

        Each takes its share before the reservation goes back (in this order, so that no
        waiter is let in on the sum of both). Forced, not waited for: the bodies are
        already in memory, and the reservation made room for them.
        """
        holds = []
        for message in messages:
            hold = Hold()
            # getsizeof: a str holds 1, 2 or 4 bytes a character, by its widest character.
            self.budget.resize(hold, sys.getsizeof(message.body) + constants.MESSAGE_OVERHEAD_BYTES)
            holds.append(hold)
        self.unreserve(reservation)
        return holds

    def finished(self, hold: Hold) -> None:
        """The submission is deleted, released or abandoned: what it held goes back."""
        self.budget.release(hold)

    # --- one submission (its processing) --------------------------------------------

    def keep_parsed(self, hold: Hold, nbytes: int) -> bool:
        """What parsing left (`nbytes`) replaces the body in `hold`, if that fits now and
        nobody waits before it; False leaves the hold as it was.

        On False the caller lets go of what it parsed, waits with `wait_to_parse`, and
        parses again: parsing is deterministic, and a second parse is cheaper than holding
        more than the budget allows.
        """
        return self.budget.try_resize(hold, nbytes)

    async def wait_to_parse(self, hold: Hold, nbytes: int) -> None:
        """Wait, in turn, until `hold` holds the `nbytes` a parse will leave."""
        await self.budget.grow(hold, nbytes)

    def waiting_for_turn(self, hold: Hold) -> AbstractContextManager[None]:
        """While a FIFO submission waits for its group's earlier one, its bytes count as a
        waiter's (`MemoryBudget.parked`): that one may itself wait for room only waiters hold."""
        return self.budget.parked(hold)

    def landed(self, hold: Hold, nbytes_left: int) -> None:
        """Part of the submission landed (its lane, or its letters): `hold` keeps only what
        has not, at once, whether it fits or not (the memory is already taken)."""
        self.budget.resize(hold, nbytes_left)
