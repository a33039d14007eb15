"""The congestion window: how many records the sink may have in flight to Kinesis.

TCP bounds the bytes in flight by a window that shrinks on loss and grows back while
segments are acknowledged; the sink bounds records in flight the same way, so that under
throttling or a slow stream it settles at what the shards take rather than retrying into
them. Pure bookkeeping: no I/O, no asyncio; the sink tells it what it sent and how each
call was answered, and asks it how much room is left.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from event_processor import constants


class Change(enum.Enum):
    """What one answered call did to the window."""

    HELD = "held"  # unchanged: idle, a few entries throttled, or already cut this round trip
    GREW = "grew"  # the window held the call back and it went through
    THROTTLED_CUT = "throttled_cut"  # most of the call was throttled
    SLOW_CUT = "slow_cut"  # the call was slower than the target, or timed out


class CongestionWindow:
    """Records in flight, bounded by a window between 1 and `max_records`."""

    __slots__ = ("_clock", "_last_cut", "in_flight", "max_records", "records")

    def __init__(self, max_records: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_records = float(max_records)
        self.records = self.max_records  # the window: a float, as growth adds half a call
        self.in_flight = 0
        self._clock = clock  # monotonic seconds, the same clock as the calls' `sent_at`
        self._last_cut = float("-inf")  # no cut yet

    def room(self) -> int:
        """Records that may be sent now; one may always go when none is out, so that a
        window cut to its floor still probes the stream."""
        return max(int(self.records) - self.in_flight, int(self.in_flight == 0))

    def sent(self, count: int) -> int:
        """`count` records went out in one call; the records in flight with it, them included."""
        self.in_flight += count
        return self.in_flight

    def returned(self, count: int) -> None:
        """A call of `count` records came back (answered, failed or cancelled)."""
        self.in_flight -= count

    def answered(
        self,
        size: int,
        accepted: int,
        throttled: int,
        sent_at: float,
        *,
        window_limited: bool,
        outstanding: int,
        timed_out: bool = False,
    ) -> Change:
        """Adapt to one call of `size` records sent at `sent_at`, of which `accepted` were
        stored and `throttled` refused for throughput; `outstanding` were in flight with it
        and `window_limited` says the window, not the ready lanes, sized it.

        When most of a call was throttled, the shards are full: cut the window to what they
        just accepted (at most half of it). When a call was slow (or timed out), the stream
        is congested even if it says nothing: cut the window to the share of what was in
        flight with it that would have answered within PUT_TARGET_LATENCY_S, so calls get
        smaller and fewer until they are fast again; a timed-out call may have landed and
        will be resent, which is a duplicate, so slowness must be cut before it becomes
        time-outs. Each cut happens at most once per round trip, since calls sent before the
        last cut were sized by the old window and say nothing new. A few throttled entries
        (a hot key, a blip) only stop the growth: their lanes back off on their own. Grow by
        half of what went through, and only when the window held the call back: an idle
        sink proves nothing about capacity.
        """
        now = self._clock()
        elapsed = now - sent_at
        if throttled * 2 >= size:
            if sent_at > self._last_cut:
                self.records = max(1.0, min(self.records / 2, float(accepted)))
                self._last_cut = now
                return Change.THROTTLED_CUT
        elif timed_out or elapsed > constants.PUT_TARGET_LATENCY_S:
            if sent_at > self._last_cut:
                share = constants.PUT_LATENCY_CUT_MIN
                if not timed_out:
                    share = max(share, constants.PUT_TARGET_LATENCY_S / elapsed)
                self.records = max(1.0, min(self.records, float(outstanding)) * share)
                self._last_cut = now
                return Change.SLOW_CUT
        elif not throttled and window_limited:
            self.records = min(self.max_records, self.records + size / 2)
            return Change.GREW
        return Change.HELD
