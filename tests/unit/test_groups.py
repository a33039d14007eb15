"""FIFO message groups: one group's submissions take turns, nothing overtakes a failure
(groups.py, and the pipeline against fakes: pure logic)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from event_processor import constants
from event_processor.errors import PublishFailed
from event_processor.pipeline.admission import Hold
from event_processor.pipeline.groups import MessageGroups
from event_processor.pipeline.source import Message
from event_processor.pipeline.submission import Outcome
from tests.factories import encode, network_connection, new_process, received_message, submission
from tests.helpers import eventually
from tests.unit.fakes import Fakes

SUBMISSIONS = "event_processor_submissions_total"
# One valid event and one without its user: published, and one letter of rejected events.
MIXED_EVENTS = {"new_process": [new_process(), {"cmdl": "x"}]}


def grouped(group: str, doc: dict[str, Any] | None = None, body: str | None = None) -> Message:
    return received_message(encode(doc or submission()) if body is None else body, group_id=group)


def start(fakes: Fakes, *messages: Message) -> list[asyncio.Task[Outcome]]:
    """Process the messages as the worker does: one task each, started in receive order."""
    pipeline = fakes.pipeline()
    tasks = []
    for message in messages:
        hold = Hold()
        fakes.budget.resize(hold, sys.getsizeof(message.body) + constants.MESSAGE_OVERHEAD_BYTES)
        tasks.append(asyncio.create_task(pipeline.process(message, hold)))
    return tasks


async def lanes(fakes: Fakes, count: int) -> None:
    await eventually(lambda: len(fakes.sink.lanes) >= count, timeout_s=5, interval_s=0.001)


async def test_turns_pass_in_join_order_and_a_broken_turn_breaks_the_next() -> None:
    """Turn 2 waits for 1; 1 passing on lets 2 go; 2 leaving unpassed breaks 3."""
    groups = MessageGroups()
    first, second, third = (groups.join("g") for _ in range(3))
    other = groups.join("h")
    assert first.clear
    assert other.clear
    assert not second.clear
    waiting = asyncio.create_task(second.wait())
    await asyncio.sleep(0)  # the waiter is parked on the future (a step, not a timing)
    assert not waiting.done()
    first.pass_on()
    assert await waiting is True
    first.leave()
    second.leave()  # finished without passing on: failed
    assert await third.wait() is False
    third.leave()
    other.leave()
    assert len(groups) == 0, "a group with nothing in flight is forgotten"


async def test_a_cancelled_waiter_leaves_its_predecessor_alone() -> None:
    """Cancelling a successor's wait does not cancel the turn its predecessor will settle."""
    groups = MessageGroups()
    first, second = groups.join("g"), groups.join("g")
    waiting = asyncio.create_task(second.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    first.pass_on()  # would raise InvalidStateError on a cancelled future
    second.leave()
    first.leave()
    assert len(groups) == 0


async def test_a_groups_next_submission_is_published_only_after_the_last_record_of_the_one_before() -> (
    None
):
    """Two of one group and one of another: the other goes at once, the group's second only
    once the first's lane is acknowledged; deleted in that order."""
    fakes = Fakes()
    fakes.sink.hold_lanes = True
    docs = [submission() for _ in range(3)]
    m1, m2, x = grouped("g", docs[0]), grouped("g", docs[1]), grouped("h", docs[2])
    tasks = start(fakes, m1, m2, x)
    await lanes(fakes, 2)
    assert [lane.submission_id for lane in fakes.sink.lanes] == [
        docs[0]["submission_id"],
        docs[2]["submission_id"],
    ]
    fakes.sink.lane(docs[2]["submission_id"]).future.set_result(None)
    fakes.sink.lane(docs[0]["submission_id"]).future.set_result(None)
    await lanes(fakes, 3)
    fakes.sink.lane(docs[1]["submission_id"]).future.set_result(None)
    assert await asyncio.gather(*tasks) == [Outcome.PUBLISHED] * 3
    assert fakes.source.deleted.index(m1) < fakes.source.deleted.index(m2)


async def test_a_failure_releases_the_rest_of_its_group_in_order_and_not_the_others() -> None:
    """The first of three fails: the second and third are released (visibility 0), in order,
    never published; another group is not held back."""
    fakes = Fakes()
    fakes.sink.hold_lanes = True
    docs = [submission() for _ in range(4)]
    m1, m2, m3 = (grouped("g", d) for d in docs[:3])
    x = grouped("h", docs[3])
    tasks = start(fakes, m1, m2, m3, x)
    await lanes(fakes, 2)
    fakes.sink.lane(docs[3]["submission_id"]).future.set_result(None)
    fakes.sink.lane(docs[0]["submission_id"]).future.set_exception(PublishFailed("Internal", 3))
    outcomes = await asyncio.gather(*tasks)
    assert outcomes == [Outcome.FAILED, Outcome.RELEASED, Outcome.RELEASED, Outcome.PUBLISHED]
    assert len(fakes.sink.lanes) == 2, "nothing of the group published after the failure"
    assert fakes.source.visibility == [([m2], 0), ([m3], 0)]
    assert fakes.source.deleted == [x]
    assert fakes.metric(SUBMISSIONS, {"outcome": "released"}) == 2


async def test_a_rejected_submission_does_not_block_its_group() -> None:
    """The first is rejected whole and its letter waits for the DLQ: the second publishes."""
    fakes = Fakes()
    fakes.dlq.gate = asyncio.Event()
    doc = submission()
    m1, m2 = grouped("g", body="!!! not a submission"), grouped("g", doc)
    tasks = start(fakes, m1, m2)
    await lanes(fakes, 1)
    assert not fakes.dlq.sent, "the letter still waits"
    assert await tasks[1] is Outcome.PUBLISHED
    fakes.dlq.gate.set()
    assert await tasks[0] is Outcome.REJECTED
    [letter] = fakes.dlq.sent
    assert letter.group_id == "g"
    assert letter.deduplication_id == f"{m1.message_id}:submission"


async def test_letters_waiting_for_the_dlq_do_not_hold_the_group_once_the_records_landed() -> None:
    """The first has rejected events whose letter waits: once its records are acknowledged
    the second publishes; each is deleted once its own work is done."""
    fakes = Fakes()
    fakes.dlq.gate = asyncio.Event()
    first, second = (
        submission(MIXED_EVENTS),
        submission({"network_connection": [network_connection()]}),
    )
    m1, m2 = grouped("g", first), grouped("g", second)
    tasks = start(fakes, m1, m2)
    assert await tasks[1] is Outcome.PUBLISHED
    assert not tasks[0].done()
    fakes.dlq.gate.set()
    assert await tasks[0] is Outcome.PUBLISHED
    [letter] = fakes.dlq.sent
    assert (letter.group_id, letter.deduplication_id) == ("g", f"{m1.message_id}:events:1")


async def test_a_group_in_a_budget_smaller_than_each_submission_does_not_deadlock() -> None:
    """Each needs more than the whole budget: the group's submissions still go, one by one."""
    fakes = Fakes(budget_bytes=1)  # every submission needs more than the whole budget
    docs = [submission(), submission()]
    tasks = start(fakes, grouped("g", docs[0]), grouped("g", docs[1]))
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [Outcome.PUBLISHED] * 2
