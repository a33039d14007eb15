"""The pace of a long tool run: how fast it may send (`Pacer`) and how often it says how far
it got (`Progress`). Both wait on an injected monotonic clock, so tests need no sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

from event_processor import constants
from event_processor.tools.aws import Clock

# A progress line on stderr this often while a run goes (not with --quiet).
PROGRESS_EVERY_S = 5.0


class Pacer:
    """At most `rate` messages a second: message i (from 0) goes at or after start + i / rate.

    So N messages take at least (N - 1) / rate seconds. It waits on a monotonic clock until a
    batch's last message is due, rather than sleeping a fixed time after each batch.
    """

    def __init__(
        self, rate: float | None, stop: threading.Event, clock: Clock = time.monotonic
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._stop = stop
        self._clock = clock
        self._start: float | None = None
        self._sent = 0

    @property
    def batch_size(self) -> int:
        """Messages per SendMessageBatch: at most one second's worth, so the pace stays smooth."""
        if self.rate is None:
            return constants.SQS_MAX_BATCH_ENTRIES
        return max(1, min(constants.SQS_MAX_BATCH_ENTRIES, int(self.rate)))

    def wait(self, count: int) -> bool:
        """Block until `count` more messages may go; False if stopped meanwhile."""
        if self.rate is None:
            return not self._stop.is_set()
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self._start + (self._sent + count - 1) / self.rate
        while (delay := due - self._clock()) > 0:
            if self._stop.wait(delay):
                return False
        return not self._stop.is_set()

    def sent(self, count: int) -> None:
        self._sent += count


class Progress:
    """Running totals on stderr every `every_s`, for a person watching a long run."""

    def __init__(
        self,
        totals: Callable[[], str],
        err: TextIO,
        *,
        enabled: bool,
        clock: Clock = time.monotonic,
        every_s: float = PROGRESS_EVERY_S,
    ) -> None:
        self._totals = totals
        self._err = err
        self._enabled = enabled
        self._clock = clock
        self._every_s = every_s
        self._due = clock() + every_s

    def tick(self, text: str | None = None) -> None:
        """The running totals (or `text`), if the last line is `every_s` old."""
        if self._enabled and (now := self._clock()) >= self._due:
            self._due = now + self._every_s
            print(self._totals() if text is None else text, file=self._err, flush=True)
