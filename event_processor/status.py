"""What an operator reads in the logs: rejections summarised at most once an interval, a
periodic status line, and the totals the `stopped` line carries (docs/operations.md, "The
daemon's logs").

The pipeline only counts into a `RejectionTally`; the lines are written by the `Reporter`'s
two loops, which run beside the worker's heartbeat as side tasks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from event_processor import constants
from event_processor.metrics import read

if TYPE_CHECKING:
    from event_processor.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RejectionSummary:
    """Rejections since the previous summary: whole submissions and events by reason, and
    up to `constants.REJECTION_EXAMPLES` SQS message ids per reason (the dead letters'
    `source_message_id`)."""

    submissions: dict[str, int]
    events: dict[str, int]
    examples: dict[str, list[str]]


class RejectionTally:
    """Counts rejections between two summaries; a summary is due at once after a quiet
    interval, then at most once every `interval_s`.

    Called on the hot path: a rejection costs a dict increment, and an id kept only while
    its reason has fewer than the examples' cap. A broken rollout can make every submission
    a rejection, at thousands a second, so nothing here logs or allocates per rejection.
    """

    def __init__(
        self,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_examples: int = constants.REJECTION_EXAMPLES,
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._max_examples = max_examples
        self._submissions: dict[str, int] = {}
        self._events: dict[str, int] = {}
        self._examples: dict[str, list[str]] = {}
        self._last_summary_at: float | None = None
        # Set by the first rejection of a reason since the last summary (so by the first
        # rejection of all): it wakes the reporter, which then waits out the interval.
        self.pending = asyncio.Event()

    def submission(self, reason: str, message_id: str) -> None:
        """A whole submission rejected."""
        self._submissions[reason] = self._submissions.get(reason, 0) + 1
        self._example(reason, message_id)

    def events(self, counts: Mapping[str, int], message_id: str) -> None:
        """A valid submission's rejected events, by reason."""
        for reason, count in counts.items():
            self._events[reason] = self._events.get(reason, 0) + count
            self._example(reason, message_id)

    def _example(self, reason: str, message_id: str) -> None:
        kept = self._examples.get(reason)
        if kept is None:
            self._examples[reason] = [message_id]
            self.pending.set()
        elif len(kept) < self._max_examples:
            kept.append(message_id)

    def due_in(self) -> float | None:
        """Seconds until a summary may be taken: 0 now, None while nothing was rejected."""
        if not self._examples:
            return None
        if self._last_summary_at is None:
            return 0.0
        return max(0.0, self._last_summary_at + self.interval_s - self._clock())

    def take(self, *, force: bool = False) -> RejectionSummary | None:
        """The rejections since the last summary, if any and one is due (or `force`: at
        the stop); counting starts again from nothing."""
        due = self.due_in()
        if due is None or (due > 0 and not force):
            return None
        summary = RejectionSummary(self._submissions, self._events, self._examples)
        self._submissions, self._events, self._examples = {}, {}, {}
        self._last_summary_at = self._clock()
        self.pending.clear()
        return summary


def log_rejections(summary: RejectionSummary) -> None:
    """One `rejections` line; ids only, never a body or a signature."""
    log.info(
        "rejections since the last line",
        extra={
            "action": "rejections",
            "submissions": summary.submissions,
            "events": summary.events,
            "example_message_ids": summary.examples,
        },
    )


class Reporter:
    """Writes the `rejections` and `status` lines, and gives the `stopped` line its totals.

    The totals are read from the metrics, which the pipeline counts anyway: the status line
    adds nothing to the hot path.
    """

    def __init__(
        self,
        metrics: Metrics,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._clock = clock
        self._started_at = clock()
        self.rejections = RejectionTally(interval_s, clock)

    async def report_rejections(self) -> None:
        """Log rejections as they come: the first at once, then one summary an interval."""
        tally = self.rejections
        while True:
            await tally.pending.wait()
            delay = tally.due_in()
            if delay:
                # A schedule, not a synchronisation: later rejections join this summary.
                await asyncio.sleep(delay)
            summary = tally.take()
            if summary is not None:
                log_rejections(summary)

    async def report_status(self) -> None:
        """Log a status line every interval, whether or not anything happened: a quiet line
        still says the daemon is alive and what it has done."""
        while True:
            await asyncio.sleep(self._interval_s)
            log.info("status", extra={"action": "status", **self.totals()})

    def flush(self) -> None:
        """Log the rejections not yet summarised, if any (at the stop)."""
        summary = self.rejections.take(force=True)
        if summary is not None:
            log_rejections(summary)

    def totals(self) -> dict[str, Any]:
        """Counts since the start, and what is held now (in flight, the memory budget)."""
        metrics = self._metrics
        outcomes = read(metrics.submissions)
        limit = read(metrics.budget_limit_bytes).get("", 0.0)
        used = read(metrics.budget_used_bytes).get("", 0.0)
        reserved = read(metrics.budget_reserved_bytes).get("", 0.0)
        return {
            "uptime_s": round(self._clock() - self._started_at, 1),
            "received": _int(read(metrics.messages_received).get("", 0.0)),
            "published": _int(outcomes.get("published", 0.0)),
            "rejected": _int(outcomes.get("rejected", 0.0)),
            "failed": _int(outcomes.get("failed", 0.0)),
            # FIFO: made visible again unpublished, behind a failure of their group.
            "group_released": _int(outcomes.get("released", 0.0)),
            "crashed": _int(outcomes.get("error", 0.0)),
            "events_published": _int(sum(read(metrics.events_published).values())),
            "events_rejected": _int(sum(read(metrics.events_rejected).values())),
            "dlq_sent": _int(sum(read(metrics.dlq_sends).values())),
            "in_flight": _int(read(metrics.in_flight_submissions).get("", 0.0)),
            # Of those, held only because the DLQ does not take their letters yet.
            "dlq_waiting": _int(read(metrics.dlq_submissions_waiting).get("", 0.0)),
            # Apart: idle long polls reserve most of the budget by design, which says nothing
            # of the load, while what submissions hold does.
            "memory_held_pct": _pct(used - reserved, limit),
            "memory_reserved_pct": _pct(reserved, limit),
            "rejected_by_reason": _by_reason(read(metrics.submissions_rejected)),
            "events_rejected_by_reason": _by_reason(read(metrics.events_rejected)),
        }


def _pct(part: float, whole: float) -> float:
    return round(100 * max(0.0, part) / whole, 1) if whole else 0.0


def _int(value: float) -> int:
    return round(value)


def _by_reason(values: dict[str, float]) -> dict[str, int]:
    return {reason: _int(count) for reason, count in sorted(values.items()) if count}
