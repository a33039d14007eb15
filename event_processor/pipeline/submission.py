"""One submission, from received to deleted: validate, publish, dead-letter, then delete.

The order is the safety argument: the message is deleted only after every valid event is
acknowledged by Kinesis and every rejection is acknowledged by the DLQ. Any failure before
that leaves the message in SQS, where it is redelivered; event ids are deterministic, so
a redelivery produces duplicates that consumers can drop, never a loss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import FIRST_COMPLETED
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from event_processor.contract.letters import SourceMessage, event_letters, submission_letter
from event_processor.contract.parse import ParsedSubmission, parse_submission
from event_processor.contract.records import PartitionKey, format_timestamp
from event_processor.contract.rules import Rejection
from event_processor.errors import BatchEntryFailed, PublishFailed
from event_processor.pipeline.groups import MessageGroups
from event_processor.status import RejectionTally

if TYPE_CHECKING:
    from event_processor.auth.authenticator import Authenticator
    from event_processor.contract.signing import Envelope
    from event_processor.metrics import Metrics
    from event_processor.pipeline.admission import Admission, Hold
    from event_processor.pipeline.dead_letters import DeadLetterQueue
    from event_processor.pipeline.groups import Turn
    from event_processor.pipeline.sink import KinesisSink
    from event_processor.pipeline.source import Message, SqsSource

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    PUBLISHED = "published"  # every valid event published (rejected events, if any, in the DLQ)
    REJECTED = "rejected"  # the whole submission went to the DLQ
    FAILED = "failed"  # left in SQS for redelivery: publish or DLQ gave up (or refused)
    RELEASED = "released"  # made visible again unpublished: an earlier one of its group failed


class Pipeline:
    def __init__(
        self,
        source: SqsSource,
        sink: KinesisSink,
        dlq: DeadLetterQueue,
        metrics: Metrics,
        *,
        admission: Admission,
        partition_key: PartitionKey,
        auth: Authenticator | None = None,
        rejections: RejectionTally | None = None,
    ) -> None:
        self._admission = admission
        self._auth = auth  # None: AUTH_MODE=off, nothing is checked
        self._source = source
        self._sink = sink
        self._dlq = dlq
        self._metrics = metrics
        self._partition_key = partition_key
        self._outcomes = {o: metrics.submissions.labels(o.value) for o in Outcome}
        # Counted for the `rejections` log line; a tally nobody reads when none is given.
        self._rejections = rejections or RejectionTally(interval_s=float("inf"))
        # FIFO sources: the turns of the groups in flight (groups.py).
        self.groups = MessageGroups()

    async def process(self, message: Message, hold: Hold) -> Outcome:
        # A group's turns are taken here, at the task's first step: the worker starts the
        # tasks of a receive in the order received, and asyncio runs first steps in that order.
        turn = None if message.group_id is None else self.groups.join(message.group_id)
        try:
            outcome = await self._process(message, hold, turn)
        except (PublishFailed, BatchEntryFailed) as exc:
            # Not deleted: SQS redelivers it once its visibility runs out, and after
            # maxReceiveCount the queue's redrive policy moves it to the DLQ.
            log.error(  # noqa: TRY400 - the reason is the message; a traceback adds nothing
                "submission left for redelivery",
                extra={
                    "action": "submission_failed",
                    "message_id": message.message_id,
                    "error": str(exc),
                },
            )
            outcome = Outcome.FAILED
        finally:
            if turn is not None:
                turn.leave()  # breaks the turn unless it was passed on
        self._outcomes[outcome].inc()
        return outcome

    async def _process(self, message: Message, hold: Hold, turn: Turn | None) -> Outcome:
        # The body is needed only to parse (and to dead-letter a rejected submission whole);
        # the Message itself lives on in the worker's in-flight set until it is finished.
        body, message.body = message.body, ""
        # Who sent it, before anything of it is parsed: an unauthenticated body costs an HMAC.
        signer: Envelope | None = None
        if self._auth is not None:
            verdict = await self._auth.verify(message.attributes, body)
            if isinstance(verdict, Rejection):
                return await self._reject(message, body, verdict, hold, turn)
            signer = verdict
        parsed = await self._parse(body, hold)
        if signer is not None:
            assert self._auth is not None
            # The body must name the device that signed it; a mismatch is rejected whole.
            named = None if isinstance(parsed, Rejection) else parsed.device_id
            mismatch = self._auth.settle(signer, named)
            if mismatch is not None:
                parsed = mismatch
        if isinstance(parsed, Rejection):
            return await self._reject(message, body, parsed, hold, turn)
        del body
        if not await self._in_turn(message, hold, turn):
            return Outcome.RELEASED

        records_nbytes = parsed.records.nbytes
        published = self._sink.publish(parsed.records, message.received_at, parsed.submission_id)
        if turn is not None:
            published.add_done_callback(lambda done: _pass_on_success(done, turn))
        sending: asyncio.Future[None] | None = None
        try:
            if parsed.rejected:
                counts = parsed.rejected.counts
                for reason, count in counts.items():
                    self._metrics.events_rejected.labels(reason).inc(count)
                self._rejections.events(counts, message.message_id)
                letters_nbytes = parsed.rejected.nbytes
                dead = event_letters(source_message(message), parsed, self._dlq.max_message_bytes)
                # From here the lane alone holds the records, and lets go of them when done.
                del parsed
                sending = asyncio.ensure_future(self._dlq.send(dead, message.received_at))
                del dead
                await self._land_both(published, sending, hold, records_nbytes, letters_nbytes)
            else:
                await published
        finally:
            # A failure or a cancellation abandons the lane and the letters; no-op when done.
            published.cancel()
            if sending is not None:
                sending.cancel()
        await self._source.delete(message)
        if message.sent_at_s is not None:
            self._metrics.submission_latency.observe(max(0.0, time.time() - message.sent_at_s))
        return Outcome.PUBLISHED

    async def _parse(self, body: str, hold: Hold) -> ParsedSubmission | Rejection:
        """The body parsed, within the budget: its records and its rejected events."""
        while True:
            processed_at = format_timestamp(datetime.now(UTC))
            parsed = parse_submission(body, processed_at, self._partition_key)
            if isinstance(parsed, Rejection):
                return parsed  # it holds its body, as it did since the receive
            # What parsing left replaces the body in the budget, or is let go of to parse
            # again once there is room (Admission.keep_parsed says why).
            needed = parsed.records.nbytes + parsed.rejected.nbytes
            if self._admission.keep_parsed(hold, needed):
                return parsed
            del parsed
            await self._admission.wait_to_parse(hold, needed)

    async def _in_turn(self, message: Message, hold: Hold, turn: Turn | None) -> bool:
        """Before a FIFO submission's first effect, wait for its group's earlier one; False
        once this one was released because that one failed (nothing overtakes a failure:
        SQS hands the group out again from it). True at once on a standard queue.

        Meanwhile its bytes count as a waiter's (`Admission.waiting_for_turn`).
        """
        if turn is None or turn.clear:
            return True
        with self._admission.waiting_for_turn(hold):
            if await turn.wait():
                return True
        # Released before the turn is broken in its turn (`process` leaves it), so that the
        # group's messages become visible again in the order they were received.
        await self._source.change_visibility([message], 0)
        log.info(
            "submission released behind its group's failure",
            extra={"action": "group_released", "message_id": message.message_id},
        )
        return False

    async def _land_both(
        self,
        published: asyncio.Future[None],
        sending: asyncio.Future[None],
        hold: Hold,
        records_nbytes: int,
        letters_nbytes: int,
    ) -> None:
        """Wait for the lane and the dead letters, which travel together; raise the first
        failure (the caller then abandons the other).

        Neither waits for the other: while the DLQ is down the lane still finishes, and the
        message is then held (the heartbeat keeps it invisible) with only its letters, so
        that its events are published once, not again on a redelivery.
        """
        waiting: set[asyncio.Future[None]] = {published, sending}
        while waiting:
            done, waiting = await asyncio.wait(waiting, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
            # What has landed lets go of its bytes; letters that wait keep theirs.
            self._admission.landed(
                hold,
                (0 if published.done() else records_nbytes)
                + (0 if sending.done() else letters_nbytes),
            )

    async def _reject(
        self, message: Message, body: str, rejection: Rejection, hold: Hold, turn: Turn | None
    ) -> Outcome:
        """The whole submission to the DLQ, with its original body and attributes; then delete."""
        if not await self._in_turn(message, hold, turn):
            return Outcome.RELEASED
        if turn is not None:
            turn.pass_on()  # nothing of it goes to the stream: its group goes on meanwhile
        self._metrics.submissions_rejected.labels(rejection.reason.value).inc()
        self._rejections.submission(rejection.reason.value, message.message_id)
        # While the DLQ is down this waits, the message held, as valid events' letters do.
        letter = submission_letter(source_message(message), body, rejection)
        await self._dlq.send([letter], message.received_at)
        await self._source.delete(message)
        return Outcome.REJECTED


def source_message(message: Message) -> SourceMessage:
    """What the dead letters of `message` say of it."""
    return SourceMessage(
        message.message_id, message.receive_count, message.attributes, message.group_id
    )


def _pass_on_success(published: asyncio.Future[None], turn: Turn) -> None:
    """The lane is done: its last record acknowledged passes the group's turn on."""
    if not published.cancelled() and published.exception() is None:
        turn.pass_on()
