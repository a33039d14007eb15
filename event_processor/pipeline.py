"""One submission, from received to deleted: validate, publish, dead-letter, then delete.

The order is the safety argument: the message is deleted only after every valid event is
acknowledged by Kinesis and every rejection is acknowledged by the DLQ. Any failure before
that leaves the message in SQS, where it is redelivered; event ids are deterministic, so
a redelivery produces duplicates that consumers can drop, never a loss.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from event_processor.dlq import event_letters, submission_letter
from event_processor.errors import BatchEntryFailed, PublishFailed
from event_processor.models import (
    PartitionKey,
    Rejection,
    build_records,
    format_timestamp,
    parse_submission,
)

if TYPE_CHECKING:
    from event_processor.dlq import DeadLetterQueue
    from event_processor.metrics import Metrics
    from event_processor.sink import KinesisSink
    from event_processor.source import Message, SqsSource

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    PUBLISHED = "published"  # every valid event published (rejected events, if any, in the DLQ)
    REJECTED = "rejected"  # the whole submission went to the DLQ
    FAILED = "failed"  # left in SQS for redelivery: publish or DLQ gave up


class Pipeline:
    def __init__(
        self,
        source: SqsSource,
        sink: KinesisSink,
        dlq: DeadLetterQueue,
        metrics: Metrics,
        partition_key: PartitionKey,
    ) -> None:
        self._source = source
        self._sink = sink
        self._dlq = dlq
        self._metrics = metrics
        self._partition_key = partition_key
        self._outcomes = {o: metrics.submissions.labels(o.value) for o in Outcome}

    async def process(self, message: Message) -> Outcome:
        try:
            outcome = await self._process(message)
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
        self._outcomes[outcome].inc()
        return outcome

    async def _process(self, message: Message) -> Outcome:
        parsed = parse_submission(message.body)
        if isinstance(parsed, Rejection):
            self._metrics.submissions_rejected.labels(parsed.reason.value).inc()
            await self._dlq.send([submission_letter(message, parsed)])
            await self._source.delete(message)
            return Outcome.REJECTED

        processed_at = format_timestamp(datetime.now(UTC))
        records = build_records(parsed, processed_at, self._partition_key)
        published = self._sink.publish(records)
        try:
            # Dead letters travel while the lane publishes; both must land before the delete.
            if parsed.rejected:
                for rejected in parsed.rejected:
                    self._metrics.events_rejected.labels(rejected.rejection.reason.value).inc()
                await self._dlq.send(event_letters(message, parsed))
            await published
        finally:
            # A failed DLQ send or a cancellation abandons the lane; no-op when it is done.
            published.cancel()
        await self._source.delete(message)
        if message.sent_at_s is not None:
            self._metrics.submission_latency.observe(max(0.0, time.time() - message.sent_at_s))
        return Outcome.PUBLISHED
