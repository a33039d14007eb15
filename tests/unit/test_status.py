"""The operator's log lines as pure logic: the rejection tally's rate limit (an injected
clock, never the wall), its examples' cap, the totals read from the metrics, and the
pipeline counting into the tally."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest
from prometheus_client import CollectorRegistry

from event_processor import constants
from event_processor.metrics import Metrics
from event_processor.pipeline.admission import Hold
from event_processor.pipeline.source import Message
from event_processor.status import RejectionTally, Reporter
from tests.factories import encode, new_process, received_message, submission
from tests.helpers import eventually
from tests.unit.fakes import Fakes

INTERVAL_S = 60.0


class Clock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def held(fakes: Fakes, message: Message) -> Hold:
    """The hold the worker gives a received message."""
    hold = Hold()
    fakes.budget.resize(hold, sys.getsizeof(message.body) + constants.MESSAGE_OVERHEAD_BYTES)
    return hold


def tally(clock: Clock) -> RejectionTally:
    return RejectionTally(INTERVAL_S, clock)


def test_nothing_is_due_while_nothing_was_rejected() -> None:
    """No rejection: no summary, nothing to wake for, however much time passes."""
    clock = Clock()
    rejections = tally(clock)
    assert rejections.due_in() is None
    clock.now += 10 * INTERVAL_S
    assert rejections.take() is None
    assert not rejections.pending.is_set()


def test_the_first_rejection_is_due_at_once() -> None:
    """The first rejection wakes the reporter and its summary may be taken at once."""
    clock = Clock()
    rejections = tally(clock)
    rejections.submission("invalid_body", "m-1")
    assert rejections.pending.is_set()
    assert rejections.due_in() == 0
    summary = rejections.take()
    assert summary is not None
    assert (summary.submissions, summary.events) == ({"invalid_body": 1}, {})
    assert summary.examples == {"invalid_body": ["m-1"]}
    assert not rejections.pending.is_set()


def test_after_a_summary_the_next_waits_out_the_interval() -> None:
    """Rejections right after a summary are held until a whole interval has passed, then
    summarised together in one."""
    clock = Clock()
    rejections = tally(clock)
    rejections.submission("invalid_body", "m-1")
    assert rejections.take() is not None

    clock.now += 15
    rejections.submission("invalid_body", "m-2")
    rejections.events({"unknown_event_type": 4}, "m-3")
    assert rejections.due_in() == INTERVAL_S - 15
    assert rejections.take() is None, "one summary an interval at most"
    clock.now += INTERVAL_S - 15
    summary = rejections.take()
    assert summary is not None
    assert summary.submissions == {"invalid_body": 1}
    assert summary.events == {"unknown_event_type": 4}
    assert summary.examples == {"invalid_body": ["m-2"], "unknown_event_type": ["m-3"]}
    assert rejections.take() is None, "counting starts again from nothing"


def test_after_a_quiet_interval_the_first_rejection_is_due_at_once_again() -> None:
    """Once an interval has passed without a summary, a new rejection is not held back."""
    clock = Clock()
    rejections = tally(clock)
    rejections.submission("invalid_body", "m-1")
    assert rejections.take() is not None
    clock.now += 5 * INTERVAL_S
    rejections.events({"event_not_an_object": 1}, "m-2")
    assert rejections.due_in() == 0
    assert rejections.take() is not None


def test_examples_are_capped_per_reason_while_counts_go_on() -> None:
    """Thousands of rejections keep at most REJECTION_EXAMPLES ids per reason, the first ones;
    the counts are exact, and a reason shared by submissions and events shares its ids."""
    clock = Clock()
    rejections = tally(clock)
    for i in range(5000):
        rejections.submission("signature_invalid", f"s-{i}")
        rejections.events({"event_not_an_object": 2, "unknown_event_type": 1}, f"e-{i}")
    summary = rejections.take()
    assert summary is not None
    assert summary.submissions == {"signature_invalid": 5000}
    assert summary.events == {"event_not_an_object": 10_000, "unknown_event_type": 5000}
    cap = constants.REJECTION_EXAMPLES
    assert summary.examples == {
        "signature_invalid": [f"s-{i}" for i in range(cap)],
        "event_not_an_object": [f"e-{i}" for i in range(cap)],
        "unknown_event_type": [f"e-{i}" for i in range(cap)],
    }


def test_a_forced_take_at_the_stop_does_not_wait_for_the_interval() -> None:
    """At the stop, what is left is summarised even inside the interval; nothing left: None."""
    clock = Clock()
    rejections = tally(clock)
    rejections.submission("invalid_body", "m-1")
    assert rejections.take() is not None
    rejections.submission("invalid_body", "m-2")
    summary = rejections.take(force=True)
    assert summary is not None
    assert summary.submissions == {"invalid_body": 1}
    assert rejections.take(force=True) is None


def test_totals_are_read_from_the_metrics() -> None:
    """The status and stopped lines' counts are the metrics' (since the start, summed over
    labels, by reason where it says so), uptime by the injected clock."""
    clock = Clock()
    metrics = Metrics(CollectorRegistry(), memory_limit_bytes=None)
    reporter = Reporter(metrics, INTERVAL_S, clock)
    metrics.messages_received.inc(12)
    for outcome, count in (
        ("published", 7),
        ("rejected", 3),
        ("failed", 1),
        ("released", 2),
        ("error", 1),
    ):
        metrics.submissions.labels(outcome).inc(count)
    metrics.submissions_rejected.labels("invalid_body").inc(2)
    metrics.submissions_rejected.labels("signature_invalid").inc(1)
    metrics.events_published.labels("new_process").inc(20)
    metrics.events_published.labels("network_connection").inc(5)
    metrics.events_rejected.labels("unknown_event_type").inc(4)
    metrics.dlq_sends.labels("submission").inc(3)
    metrics.dlq_sends.labels("event").inc(2)
    metrics.in_flight_submissions.set(6)
    metrics.dlq_submissions_waiting.set(2)
    metrics.budget_limit_bytes.set(1000)
    metrics.budget_used_bytes.set(250)
    metrics.budget_reserved_bytes.set(100)
    clock.now += 90.5

    assert reporter.totals() == {
        "uptime_s": 90.5,
        "received": 12,
        "published": 7,
        "rejected": 3,
        "failed": 1,
        "group_released": 2,
        "crashed": 1,
        "events_published": 25,
        "events_rejected": 4,
        "dlq_sent": 5,
        "in_flight": 6,
        "dlq_waiting": 2,
        "memory_held_pct": 15.0,
        "memory_reserved_pct": 10.0,
        "rejected_by_reason": {"invalid_body": 2, "signature_invalid": 1},
        "events_rejected_by_reason": {"unknown_event_type": 4},
    }


def test_totals_of_a_daemon_that_did_nothing_are_zeros() -> None:
    """Before anything is counted the totals are zeros and empty breakdowns, not missing."""
    reporter = Reporter(Metrics(CollectorRegistry(), memory_limit_bytes=None), INTERVAL_S)
    totals = reporter.totals()
    assert totals["received"] == totals["published"] == totals["dlq_sent"] == 0
    assert totals["rejected_by_reason"] == {}
    assert totals["memory_held_pct"] == totals["memory_reserved_pct"] == 0.0


async def test_the_pipeline_counts_rejected_submissions_and_events_into_the_tally() -> None:
    """A whole rejection counts its reason and message id, a valid submission's rejected
    events their reasons (by events) and its message id."""
    fakes = Fakes()
    rejections = RejectionTally(INTERVAL_S)
    pipeline = fakes.pipeline(rejections=rejections)
    bad = received_message(encode(submission(submission_id="not-a-uuid")))
    mixed = received_message(encode(submission({"new_process": [new_process(), 7, 8]})))

    await pipeline.process(bad, held(fakes, bad))
    await pipeline.process(mixed, held(fakes, mixed))

    summary = rejections.take()
    assert summary is not None
    assert summary.submissions == {"invalid_field": 1}
    assert summary.events == {"event_not_an_object": 2}
    assert summary.examples == {
        "invalid_field": [bad.message_id],
        "event_not_an_object": [mixed.message_id],
    }


async def test_the_reporter_logs_the_first_rejection_at_once_and_the_rest_at_the_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rejections loop writes the first rejection promptly (not an interval later);
    what comes inside the interval waits, and the stop's flush writes it."""
    reporter = Reporter(Metrics(CollectorRegistry(), memory_limit_bytes=None), 3600.0)
    loop = asyncio.create_task(reporter.report_rejections())

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "action", None) == "rejections"]

    try:
        with caplog.at_level(logging.INFO, logger="event_processor.status"):
            reporter.rejections.submission("invalid_body", "m-1")
            await eventually(lambda: len(lines()) == 1, timeout_s=5, interval_s=0.01)
            reporter.rejections.submission("invalid_body", "m-2")
            reporter.flush()
    finally:
        loop.cancel()
    first, last = lines()
    assert first.__dict__["submissions"] == {"invalid_body": 1}
    assert first.__dict__["example_message_ids"] == {"invalid_body": ["m-1"]}
    assert last.__dict__["example_message_ids"] == {"invalid_body": ["m-2"]}
