"""The worker's shutdown against fakes (pure logic): receiving stops, in-flight submissions
drain under the grace, the unfinished are released with visibility 0, and a cancellation
from outside takes the same path.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from event_processor import constants
from event_processor.pipeline.source import Message
from event_processor.pipeline.worker import DrainOutcome, Worker
from tests.factories import encode, submission
from tests.helpers import eventually
from tests.unit.fakes import Fakes

# Short, so that a test that lets the grace expire does not wait long for it.
SHORT_GRACE_S = 0.3
# Longer than any test here may take: a drain that ends early did not wait for the grace.
LONG_GRACE_S = 60.0
SUBMISSIONS = "event_processor_submissions_total"


async def started(
    fakes: Fakes, count: int, *, grace_s: float
) -> tuple[Worker, asyncio.Task[None], list[Message], list[str]]:
    """A running worker with `count` submissions in flight (their lanes held by the sink) and
    its receiver back in a long poll on the empty queue; (worker, task, messages, ids)."""
    fakes.sink.hold_lanes = True
    docs = [submission() for _ in range(count)]
    messages = fakes.source.send(*(encode(doc) for doc in docs))
    worker = fakes.worker(shutdown_grace_s=grace_s)
    task = asyncio.create_task(worker.run())
    await eventually(
        lambda: len(fakes.sink.lanes) == count and fakes.source.polling.is_set(),
        timeout_s=5,
        interval_s=0.001,
    )
    assert worker.in_flight == count
    return worker, task, messages, [doc["submission_id"] for doc in docs]


async def receiving_stopped(fakes: Fakes) -> None:
    """Wait until the long poll under way has been cut off (after its stop window)."""
    timeout_s = constants.RECEIVE_STOP_WINDOW_S + 5
    await eventually(lambda: fakes.source.polls_cancelled == 1, timeout_s=timeout_s)


def assert_all_let_go(fakes: Fakes, worker: Worker) -> None:
    """Nothing in flight, nothing held in the budget, the sink closed, the worker stopped."""
    assert worker.in_flight == 0
    assert fakes.metric("event_processor_in_flight_submissions") == 0
    assert fakes.budget.used_bytes == 0
    assert fakes.sink.closed
    assert not worker.running


async def test_a_stop_ends_receiving_then_drains_what_is_in_flight() -> None:
    """On stop no receive follows and the idle poll is cut off, while the in-flight
    submissions are waited for and deleted; nothing is released."""
    fakes = Fakes()
    worker, run, messages, ids = await started(fakes, 3, grace_s=LONG_GRACE_S)
    receives = fakes.source.receives

    worker.stop.set()
    await receiving_stopped(fakes)
    assert not run.done(), "the drain waits for the submissions in flight"
    assert worker.in_flight == 3
    for submission_id in ids:
        fakes.sink.lane(submission_id).future.set_result(None)
    await asyncio.wait_for(run, timeout=10)

    assert fakes.source.receives == receives
    assert sorted(m.message_id for m in fakes.source.deleted) == sorted(
        m.message_id for m in messages
    )
    assert fakes.source.visibility == []
    assert fakes.metric(SUBMISSIONS, {"outcome": "published"}) == 3
    assert worker.drained == DrainOutcome(), "drained whole: nothing forced or released"
    assert_all_let_go(fakes, worker)


async def test_what_the_grace_leaves_unfinished_is_released_with_visibility_0(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the grace the unfinished are cancelled (their lanes abandoned) and made visible
    again at once, after the sink closed; what finished in the grace is deleted instead."""
    fakes = Fakes()
    worker, run, messages, ids = await started(fakes, 3, grace_s=SHORT_GRACE_S)

    with caplog.at_level(logging.INFO, logger="event_processor.pipeline.worker"):
        worker.stop.set()
        await receiving_stopped(fakes)
        fakes.sink.lane(ids[0]).future.set_result(None)  # finishes while draining
        await asyncio.wait_for(run, timeout=10)

    assert fakes.source.deleted == [messages[0]]
    [(released, timeout_s)] = fakes.source.visibility
    assert timeout_s == 0
    assert {m.message_id for m in released} == {m.message_id for m in messages[1:]}
    assert all(fakes.sink.lane(i).future.cancelled() for i in ids[1:])
    # The sink closes first, so that no record of ours lands after a redelivery's.
    assert fakes.calls[-2:] == ["sink.close", "visibility 0"]
    actions = [getattr(r, "action", None) for r in caplog.records]
    assert "grace_expired" in actions
    assert worker.drained == DrainOutcome(
        forced=False, grace_expired=True, unfinished=2, released=2
    )
    assert fakes.metric(SUBMISSIONS, {"outcome": "published"}) == 1
    assert fakes.metric(SUBMISSIONS, {"outcome": "failed"}) == 0
    assert_all_let_go(fakes, worker)


async def test_a_cancellation_from_outside_drains_and_releases_like_a_stop() -> None:
    """Cancelling run() stops receiving, drains under the grace, releases the rest with
    visibility 0, and only then lets the cancellation go on."""
    fakes = Fakes()
    worker, run, messages, ids = await started(fakes, 2, grace_s=SHORT_GRACE_S)

    run.cancel()
    await receiving_stopped(fakes)
    assert not run.done()
    fakes.sink.lane(ids[0]).future.set_result(None)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, timeout=10)

    assert run.cancelled()
    assert worker.stop.is_set()
    assert fakes.source.deleted == [messages[0]]
    assert [([m.message_id for m in ms], t) for ms, t in fakes.source.visibility] == [
        ([messages[1].message_id], 0)
    ]
    assert fakes.sink.lane(ids[1]).future.cancelled()
    assert fakes.calls[-2:] == ["sink.close", "visibility 0"]
    assert_all_let_go(fakes, worker)


@pytest.mark.parametrize("how", ["second signal", "second cancellation"])
async def test_a_second_stop_skips_the_rest_of_the_grace_but_still_releases(how: str) -> None:
    """A second signal (force) or a second cancellation during the drain ends it at once;
    the unfinished are still released with visibility 0."""
    fakes = Fakes()
    worker, run, messages, ids = await started(fakes, 1, grace_s=LONG_GRACE_S)
    if how == "second signal":
        worker.stop.set()
    else:
        run.cancel()
    await receiving_stopped(fakes)
    assert not run.done(), "draining under a 60 s grace"

    started_at = time.monotonic()
    if how == "second signal":
        worker.force.set()
        await asyncio.wait_for(run, timeout=10)
    else:
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, timeout=10)

    assert time.monotonic() - started_at < LONG_GRACE_S / 2
    assert worker.force.is_set()
    if how == "second signal":  # a cancellation raises instead of reporting
        assert worker.drained == DrainOutcome(
            forced=True, grace_expired=False, unfinished=1, released=1
        )
    assert fakes.source.deleted == []
    assert [([m.message_id for m in ms], t) for ms, t in fakes.source.visibility] == [
        ([messages[0].message_id], 0)
    ]
    assert fakes.sink.lane(ids[0]).future.cancelled()
    assert_all_let_go(fakes, worker)


async def test_a_receive_under_way_at_the_stop_lands_and_its_messages_drain() -> None:
    """A receive whose answer arrives inside the stop window is not cut off: its messages
    are processed and deleted rather than left hidden for a visibility timeout."""
    fakes = Fakes()
    worker = fakes.worker(shutdown_grace_s=LONG_GRACE_S)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(fakes.source.polling.wait(), timeout=5)

    worker.stop.set()
    # The fake models the answer's latency: it lands well inside the window.
    fakes.source.send_later(constants.RECEIVE_STOP_WINDOW_S / 5, encode(submission()))
    await asyncio.wait_for(run, timeout=10)

    assert fakes.source.polls_cancelled == 0
    assert len(fakes.source.deleted) == 1
    assert fakes.source.visibility == []
    assert_all_let_go(fakes, worker)


async def test_a_failed_side_task_drains_releases_and_reraises() -> None:
    """A receiver that dies of a bug triggers the same drain and release, then run() raises
    what killed it."""
    fakes = Fakes()
    worker, run, messages, ids = await started(fakes, 1, grace_s=SHORT_GRACE_S)

    fakes.source.fail_receives(RuntimeError("receiver bug"))
    with pytest.raises(RuntimeError, match="receiver bug"):
        await asyncio.wait_for(run, timeout=10)

    assert worker.stop.is_set()
    assert [([m.message_id for m in ms], t) for ms, t in fakes.source.visibility] == [
        ([messages[0].message_id], 0)
    ]
    assert fakes.sink.lane(ids[0]).future.cancelled()
    assert_all_let_go(fakes, worker)
