"""Pipeline.process, one submission from received to deleted, against fakes (pure logic).

The safety rule under test: the message is deleted only once every valid event is
acknowledged by the sink and every rejection by the DLQ; any failure leaves it in SQS.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import pytest

from event_processor import constants
from event_processor.auth.keyset import KeySet
from event_processor.config import AuthMode
from event_processor.contract import signing
from event_processor.contract.letters import KIND_SUBMISSION, read_letter, string_attribute
from event_processor.contract.parse import ParsedSubmission, parse_submission
from event_processor.contract.records import PartitionKey
from event_processor.errors import BatchEntryFailed, PublishFailed
from event_processor.pipeline.admission import Hold
from event_processor.pipeline.source import Message
from event_processor.pipeline.submission import Outcome
from tests.factories import encode, network_connection, new_process, received_message, submission
from tests.helpers import eventually
from tests.unit.fakes import Fakes

PROCESSED_AT = "2026-11-22T10:00:00.000000Z"
SUBMISSIONS = "event_processor_submissions_total"
REJECTED = "event_processor_submissions_rejected_total"
AUTH_RESULTS = "event_processor_auth_results_total"
# One valid event, one without its user, one that is no object, one valid connection.
MIXED_EVENTS = {
    "new_process": [new_process(), {"cmdl": "x"}, 7],
    "network_connection": [network_connection()],
}


def records_nbytes(body: str) -> int:
    """What the records parsed from `body` hold in the budget (parsed here on its own)."""
    parsed = parse_submission(body, PROCESSED_AT, PartitionKey.DEVICE_ID)
    assert isinstance(parsed, ParsedSubmission)
    return parsed.records.nbytes


def held(fakes: Fakes, message: Message) -> Hold:
    """The hold the worker gives a received message: its body and the Message around it."""
    hold = Hold()
    fakes.budget.resize(hold, sys.getsizeof(message.body) + constants.MESSAGE_OVERHEAD_BYTES)
    return hold


async def test_an_accepted_submission_is_published_in_order_then_deleted() -> None:
    """All events go out as one lane in body order; then the delete; no DLQ; counted once."""
    fakes = Fakes()
    doc = submission()
    message = received_message(encode(doc), received_at=12.5, sent_at_s=time.time() - 5)
    hold = held(fakes, message)
    expected_nbytes = records_nbytes(message.body)

    outcome = await fakes.pipeline().process(message, hold)

    assert outcome is Outcome.PUBLISHED
    [lane] = fakes.sink.lanes
    assert (lane.submission_id, lane.sequences, lane.received_at) == (
        doc["submission_id"],
        [0, 1, 2],
        12.5,
    )
    assert fakes.calls == ["publish", "delete"]
    assert fakes.source.deleted == [message]
    assert fakes.dlq.sent == []
    assert message.body == "", "the body is let go once parsed"
    # The hold shrank from the body to what parsing left, and the budget counts just that.
    assert hold.nbytes == expected_nbytes
    assert fakes.budget.used_bytes == expected_nbytes
    assert fakes.metric(SUBMISSIONS, {"outcome": "published"}) == 1
    assert fakes.metric("event_processor_submission_latency_seconds_count") == 1
    assert fakes.metric("event_processor_submission_latency_seconds_sum") >= 5


async def test_a_rejected_submission_goes_whole_to_the_dlq_then_is_deleted() -> None:
    """A bad header: the original body and attributes go to the DLQ with the reason, nothing
    to the sink, and the message is deleted after the DLQ took it."""
    fakes = Fakes()
    body = encode(submission(submission_id="not-a-uuid"))
    trace = {"trace": {"DataType": "String", "StringValue": "t-1"}}
    message = received_message(body, receive_count=3, attributes=trace)

    outcome = await fakes.pipeline().process(message, held(fakes, message))

    assert outcome is Outcome.REJECTED
    assert fakes.sink.lanes == []
    assert fakes.calls == ["dlq.send", "delete"]
    [letter] = fakes.dlq.sent
    assert letter.kind == KIND_SUBMISSION
    assert letter.body == body
    assert string_attribute(letter.attributes, "reason") == "invalid_field"
    assert string_attribute(letter.attributes, "source_message_id") == message.message_id
    assert letter.attributes["receive_count"]["StringValue"] == "3"
    assert letter.attributes["trace"] == trace["trace"]
    assert fakes.source.deleted == [message]
    assert fakes.metric(SUBMISSIONS, {"outcome": "rejected"}) == 1
    assert fakes.metric("event_processor_submissions_rejected_total", {"reason": "invalid_field"})
    assert fakes.metric("event_processor_submission_latency_seconds_count") == 0


async def test_rejected_events_go_to_the_dlq_and_the_valid_ones_to_the_sink() -> None:
    """Per event: valid events published, rejected ones packed into letters with their reason,
    counted by reason; the letters' and records' bytes leave the budget once they landed."""
    fakes = Fakes()
    doc = submission(MIXED_EVENTS)
    message = received_message(encode(doc))
    hold = held(fakes, message)

    outcome = await fakes.pipeline().process(message, hold)

    assert outcome is Outcome.PUBLISHED
    assert fakes.sink.lane(doc["submission_id"]).sequences == [0, 3]
    letters = [read_letter(letter.body) for letter in fakes.dlq.sent]
    assert all(letter is not None for letter in letters)
    rejected = sorted(
        (entry.sequence, entry.reason)
        for letter in letters
        if letter is not None
        for entry in letter.events
    )
    assert rejected == [(1, "missing_field"), (2, "event_not_an_object")]
    assert {letter.submission_id for letter in letters if letter is not None} == {
        doc["submission_id"]
    }
    assert fakes.source.deleted == [message]
    assert fakes.calls.index("delete") > fakes.calls.index("dlq.send")
    # Letters sent and lane acknowledged: the submission holds nothing more of the budget.
    assert hold.nbytes == 0
    reasons = "event_processor_events_rejected_total"
    assert fakes.metric(reasons, {"reason": "missing_field"}) == 1
    assert fakes.metric(reasons, {"reason": "event_not_an_object"}) == 1
    assert fakes.metric(SUBMISSIONS, {"outcome": "published"}) == 1


async def test_the_delete_waits_for_both_the_lane_and_the_dead_letters() -> None:
    """With the lane and the DLQ both pending, nothing is deleted until both have landed."""
    fakes = Fakes()
    fakes.sink.hold_lanes = True
    fakes.dlq.gate = asyncio.Event()
    doc = submission(MIXED_EVENTS)
    message = received_message(encode(doc))
    hold = held(fakes, message)
    task = asyncio.create_task(fakes.pipeline().process(message, hold))

    # The lane was handed over before the letters went: both travel together.
    await eventually(lambda: fakes.calls == ["publish", "dlq.send"], timeout_s=5, interval_s=0.001)
    assert fakes.source.deleted == []
    fakes.dlq.gate.set()
    # The letters are in; the step just before waiting for the lane lets go of their bytes.
    nbytes = records_nbytes(encode(doc))
    await eventually(lambda: hold.nbytes == nbytes, timeout_s=5, interval_s=0.001)
    assert fakes.dlq.sent
    assert fakes.source.deleted == [], "deleted before the lane was acknowledged"
    assert not task.done()

    fakes.sink.lane(doc["submission_id"]).future.set_result(None)
    assert await asyncio.wait_for(task, timeout=5) is Outcome.PUBLISHED
    assert fakes.source.deleted == [message]


async def test_parsing_waits_in_turn_for_room_then_parses_again() -> None:
    """When what parsing left does not fit, the hold waits in the budget's queue (nothing is
    published meanwhile) and the body is parsed again once room frees."""
    fakes = Fakes(budget_bytes=10_000)
    message = received_message(encode(submission()))
    needed = records_nbytes(message.body)
    hold = Hold()
    fakes.budget.resize(hold, 10)
    other = Hold()
    fakes.budget.resize(other, fakes.budget.limit_bytes - 10)  # the rest is taken
    task = asyncio.create_task(fakes.pipeline().process(message, hold))

    await eventually(lambda: hold.waiting, timeout_s=5, interval_s=0.001)
    assert fakes.sink.lanes == []
    assert fakes.calls == []
    fakes.budget.release(other)

    assert await asyncio.wait_for(task, timeout=5) is Outcome.PUBLISHED
    assert len(fakes.sink.lanes) == 1
    assert hold.nbytes == needed
    assert fakes.source.deleted == [message]


async def test_a_publish_failure_leaves_the_message_for_redelivery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PublishFailed: outcome failed, counted and logged, the message is not deleted."""
    fakes = Fakes()
    fakes.sink.fail_with = PublishFailed("ProvisionedThroughputExceededException", 7)
    message = received_message(encode(submission()))

    with caplog.at_level(logging.ERROR, logger="event_processor.pipeline.submission"):
        outcome = await fakes.pipeline().process(message, held(fakes, message))

    assert outcome is Outcome.FAILED
    assert fakes.source.deleted == []
    assert fakes.metric(SUBMISSIONS, {"outcome": "failed"}) == 1
    assert fakes.metric(SUBMISSIONS, {"outcome": "published"}) == 0
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "submission_failed"]
    assert getattr(record, "message_id", None) == message.message_id
    assert "ProvisionedThroughputExceededException" in getattr(record, "error", "")


async def test_a_dlq_failure_abandons_the_lane_and_leaves_the_message() -> None:
    """Rejected events the DLQ would not take: failed, the lane cancelled, nothing deleted."""
    fakes = Fakes()
    fakes.sink.hold_lanes = True
    fakes.dlq.fail_with = BatchEntryFailed("SendMessageBatch", "InternalError", "no")
    doc = submission(MIXED_EVENTS)
    message = received_message(encode(doc))

    outcome = await fakes.pipeline().process(message, held(fakes, message))

    assert outcome is Outcome.FAILED
    assert fakes.sink.lane(doc["submission_id"]).future.cancelled()
    assert fakes.source.deleted == []
    assert fakes.metric(SUBMISSIONS, {"outcome": "failed"}) == 1


async def test_a_rejected_submission_the_dlq_would_not_take_is_not_deleted() -> None:
    """A whole rejection whose dead letter fails: failed, and left in SQS (never dropped)."""
    fakes = Fakes()
    fakes.dlq.fail_with = BatchEntryFailed("SendMessageBatch", "InternalError", "no")
    message = received_message("!!! not a submission")

    outcome = await fakes.pipeline().process(message, held(fakes, message))

    assert outcome is Outcome.FAILED
    assert fakes.source.deleted == []
    assert fakes.metric(SUBMISSIONS, {"outcome": "failed"}) == 1
    assert fakes.metric(SUBMISSIONS, {"outcome": "rejected"}) == 0


async def test_cancelling_a_submission_abandons_its_lane() -> None:
    """Cancelled while publishing (a release at shutdown): the lane is cancelled, no delete,
    no outcome counted."""
    fakes = Fakes()
    fakes.sink.hold_lanes = True
    doc = submission()
    message = received_message(encode(doc))
    task = asyncio.create_task(fakes.pipeline().process(message, held(fakes, message)))
    await eventually(lambda: bool(fakes.sink.lanes), timeout_s=5, interval_s=0.001)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert fakes.sink.lane(doc["submission_id"]).future.cancelled()
    assert fakes.source.deleted == []
    assert sum(fakes.metric(SUBMISSIONS, {"outcome": o.value}) for o in Outcome) == 0


async def test_a_bug_is_raised_not_taken_for_a_failed_submission() -> None:
    """Only named faults become `failed`: anything else propagates (the worker logs a crash)."""
    fakes = Fakes()
    fakes.sink.fail_with = KeyError("a bug")
    message = received_message(encode(submission()))

    with pytest.raises(KeyError, match="a bug"):
        await fakes.pipeline().process(message, held(fakes, message))

    assert fakes.source.deleted == []
    assert fakes.metric(SUBMISSIONS, {"outcome": "failed"}) == 0


# --- sensor authentication (AUTH_MODE) --------------------------------------------------------

SIGNER = "93552c93-6e6f-48fe-bbf9-6ba6ac20c120"
KEYS = KeySet({"k1": bytes(range(32))})


def signed_message(doc: dict[str, object], *, signer: str = SIGNER) -> Message:
    """A received message whose body `signer` signed with its key under k1."""
    body = encode(doc)
    device_key = KEYS.device_key("k1", signer)
    return received_message(
        body, attributes=signing.signature_attributes(device_key, "k1", signer, body)
    )


async def test_enforce_rejects_an_unsigned_submission_whole_before_parsing_it() -> None:
    """No signature: the original body and attributes go to the DLQ as signature_missing;
    nothing is published, not even its valid events, and it is deleted after the DLQ took it."""
    fakes = Fakes()
    auth = await fakes.authenticator(AuthMode.ENFORCE, KEYS)
    body = encode(submission(MIXED_EVENTS, device_id=SIGNER))
    trace = {"trace": {"DataType": "String", "StringValue": "t-1"}}
    message = received_message(body, attributes=trace)

    outcome = await fakes.pipeline(auth=auth).process(message, held(fakes, message))

    assert outcome is Outcome.REJECTED
    assert fakes.sink.lanes == []
    assert fakes.calls == ["dlq.send", "delete"]
    [letter] = fakes.dlq.sent
    assert (letter.kind, letter.body) == (KIND_SUBMISSION, body)
    assert string_attribute(letter.attributes, "reason") == "signature_missing"
    assert letter.attributes["trace"] == trace["trace"]
    assert fakes.metric(REJECTED, {"reason": "signature_missing"}) == 1
    assert fakes.metric(AUTH_RESULTS, {"result": "signature_missing"}) == 1


async def test_enforce_rejects_a_body_naming_another_device_whole() -> None:
    """Signed by one device, the body names another: device_mismatch, the whole body in the
    DLQ with its signature attribute, no event letters and no records."""
    fakes = Fakes()
    auth = await fakes.authenticator(AuthMode.ENFORCE, KEYS)
    other = "0f0e0d0c-0b0a-4908-8706-050403020100"
    message = signed_message(submission(MIXED_EVENTS, device_id=other))
    body = message.body

    outcome = await fakes.pipeline(auth=auth).process(message, held(fakes, message))

    assert outcome is Outcome.REJECTED
    assert fakes.sink.lanes == []
    [letter] = fakes.dlq.sent
    assert (letter.kind, letter.body) == (KIND_SUBMISSION, body)
    assert string_attribute(letter.attributes, "reason") == "device_mismatch"
    assert string_attribute(letter.attributes, "sensor-signature") is not None
    assert fakes.metric(AUTH_RESULTS, {"result": "device_mismatch"}) == 1
    assert fakes.metric(AUTH_RESULTS, {"result": "ok"}) == 0
    assert fakes.metric("event_processor_events_rejected_total", {"reason": "missing_field"}) == 0


async def test_enforce_publishes_a_signed_submission_as_off_would() -> None:
    """A genuine signature: published, its bad events dead-lettered, counted ok."""
    fakes = Fakes()
    auth = await fakes.authenticator(AuthMode.ENFORCE, KEYS)
    doc = submission(MIXED_EVENTS, device_id=SIGNER)
    message = signed_message(doc)

    outcome = await fakes.pipeline(auth=auth).process(message, held(fakes, message))

    assert outcome is Outcome.PUBLISHED
    assert fakes.sink.lane(doc["submission_id"]).sequences == [0, 3]
    assert fakes.metric(AUTH_RESULTS, {"result": "ok"}) == 1
    assert fakes.metric("event_processor_auth_verified_total", {"key_id": "k1"}) == 1


async def test_a_signed_body_that_breaks_the_contract_is_rejected_for_that() -> None:
    """The sender is genuine (ok); the body's own rule rejects it, as without signatures."""
    fakes = Fakes()
    auth = await fakes.authenticator(AuthMode.ENFORCE, KEYS)
    message = signed_message(submission(submission_id="nope", device_id=SIGNER))

    outcome = await fakes.pipeline(auth=auth).process(message, held(fakes, message))

    assert outcome is Outcome.REJECTED
    [letter] = fakes.dlq.sent
    assert string_attribute(letter.attributes, "reason") == "invalid_field"
    assert fakes.metric(AUTH_RESULTS, {"result": "ok"}) == 1


async def test_monitor_publishes_what_enforce_would_reject_and_counts_it() -> None:
    """Unsigned and mismatched submissions are published under monitor; only counted."""
    fakes = Fakes()
    auth = await fakes.authenticator(AuthMode.MONITOR, KEYS)
    unsigned = submission(device_id=SIGNER)
    mismatched = submission(device_id="0f0e0d0c-0b0a-4908-8706-050403020100")
    pipeline = fakes.pipeline(auth=auth)
    for message in (received_message(encode(unsigned)), signed_message(mismatched)):
        assert await pipeline.process(message, held(fakes, message)) is Outcome.PUBLISHED
    assert {lane.submission_id for lane in fakes.sink.lanes} == {
        unsigned["submission_id"],
        mismatched["submission_id"],
    }
    assert fakes.dlq.sent == []
    assert fakes.metric(AUTH_RESULTS, {"result": "signature_missing"}) == 1
    assert fakes.metric(AUTH_RESULTS, {"result": "device_mismatch"}) == 1


async def test_letters_the_dlq_has_not_taken_hold_only_their_bytes_and_the_message() -> None:
    """DLQ pending, lane acknowledged: not deleted, not republished, and the hold is just the
    letters' bytes; once the DLQ takes them, the delete."""
    fakes = Fakes()
    fakes.dlq.gate = asyncio.Event()
    doc = submission(MIXED_EVENTS)
    message = received_message(encode(doc))
    parsed = parse_submission(message.body, PROCESSED_AT, PartitionKey.DEVICE_ID)
    assert isinstance(parsed, ParsedSubmission)
    hold = held(fakes, message)
    task = asyncio.create_task(fakes.pipeline().process(message, hold))

    await eventually(lambda: hold.nbytes == parsed.rejected.nbytes, timeout_s=5, interval_s=0.001)
    assert fakes.sink.lane(doc["submission_id"]).future.done()
    assert fakes.source.deleted == []
    assert fakes.calls == ["publish", "dlq.send"]
    fakes.dlq.gate.set()
    assert await asyncio.wait_for(task, timeout=5) is Outcome.PUBLISHED
    assert fakes.calls == ["publish", "dlq.send", "delete"], "published once"
    assert hold.nbytes == 0
