"""Dead letters: every rejection reaches the DLQ with its reason, or is at least logged.

The letters themselves (format, packing, size) are `letters`; this module sends them. While
the DLQ fails, letters wait (their messages held by the heartbeat) for up to the policy's
letters deadline from the receive, and the DLQ is reported down once, then up once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from event_processor import constants
from event_processor.contract.letters import DeadLetter
from event_processor.errors import BatchEntryFailed, error_code
from event_processor.pipeline.batcher import Batcher, retry_entries

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

    from event_processor.aws.ports import DlqApi
    from event_processor.metrics import Metrics
    from event_processor.retry import RetryPolicy

log = logging.getLogger(__name__)

# The group of a letter to a FIFO DLQ whose message had none: only a source of another kind
# than the DLQ's, which start-up refuses, would send one.
FALLBACK_GROUP_ID = "event-processor"


class DeadLetterQueue:
    """Sends dead letters in SendMessageBatch calls; without a DLQ URL it only logs them."""

    def __init__(
        self,
        client: DlqApi,
        dlq_url: str | None,
        metrics: Metrics,
        policy: RetryPolicy,
        max_message_bytes: int = constants.SQS_MAX_MESSAGE_BYTES,
        *,
        fifo: bool = False,
    ) -> None:
        self._client = client
        self.url = dlq_url
        # A FIFO DLQ (the source is FIFO too: preflight holds them to one kind) takes each
        # letter with its group and deduplication id.
        self.fifo = fifo
        # The DLQ's MaximumMessageSize, read at start-up: the pipeline cuts letters to fit it.
        self.max_message_bytes = max_message_bytes
        self._metrics = metrics
        self._policy = policy.for_letters()
        self._deadline_s = policy.letters_deadline_s
        self._sender: Batcher[DeadLetter] = Batcher(
            self._send_batch,
            max_entries=constants.SQS_MAX_BATCH_ENTRIES,
            max_bytes=constants.SQS_MAX_BATCH_BYTES,
            size_of=lambda letter: letter.size,
            # Letters of a submission released (shutdown) or past its deadline are made again
            # on its redelivery: a batch nobody waits for stops retrying.
            drop_abandoned=True,
        )
        self.up = True  # False from a failed SendMessageBatch call until one goes through
        self._down_since = 0.0
        metrics.dlq_up.set(1)
        self._letters_waiting = 0
        self._submissions_waiting = 0
        metrics.dlq_letters_waiting.set_function(lambda: self._letters_waiting)
        metrics.dlq_submissions_waiting.set_function(lambda: self._submissions_waiting)

    async def send(self, letters: list[DeadLetter], received_at: float | None = None) -> None:
        """Return once every letter is in the DLQ; raise BatchEntryFailed if one could not be
        sent: refused (not retriable), or still failing `letters_deadline_s` after
        `received_at` (monotonic: the receive of their message; None: from now)."""
        if not letters:
            return
        if self.url is None:
            for letter in letters:
                log.warning(
                    "rejected, no DLQ configured",
                    extra={
                        "action": "rejected",
                        "kind": letter.kind,
                        "reason": letter.attributes["reason"].get("StringValue"),
                        "detail": letter.attributes["detail"].get("StringValue"),
                        "source_message_id": letter.attributes["source_message_id"].get(
                            "StringValue"
                        ),
                    },
                )
            return
        since = time.monotonic() if received_at is None else received_at
        left_s = max(0.0, since + self._deadline_s - time.monotonic())
        self._letters_waiting += len(letters)
        self._submissions_waiting += 1
        deadline = asyncio.timeout(left_s)
        try:
            async with deadline:
                await self._sender.submit_many(letters)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise BatchEntryFailed(
                "SendMessageBatch",
                "DeadlineExceeded",
                f"the DLQ did not take the letters within {self._deadline_s:g} s of the receive",
            ) from None
        finally:
            self._letters_waiting -= len(letters)
            self._submissions_waiting -= 1

    async def close(self) -> None:
        await self._sender.close()

    async def _send_batch(self, letters: list[DeadLetter]) -> list[BaseException | None]:
        url = self.url
        assert url is not None  # send() returns early without one

        def entry(i: int, letter: DeadLetter) -> SendMessageBatchRequestEntryTypeDef:
            if self.fifo:
                return {
                    "Id": str(i),
                    "MessageBody": letter.body,
                    "MessageAttributes": letter.attributes,
                    "MessageGroupId": letter.group_id or FALLBACK_GROUP_ID,
                    "MessageDeduplicationId": letter.deduplication_id,
                }
            return {
                "Id": str(i),
                "MessageBody": letter.body,
                "MessageAttributes": letter.attributes,
            }

        async def call(entries: list[Any]) -> Any:
            try:
                with self._metrics.aws_call("SendMessageBatch"):
                    response = await self._client.send_message_batch(QueueUrl=url, Entries=entries)
            except (BotoCoreError, ClientError) as exc:
                # Refused calls too (AccessDenied, QueueDoesNotExist): the DLQ takes nothing.
                self._call_failed(exc)
                raise
            self._call_succeeded()
            return response

        outcomes = await retry_entries(
            "SendMessageBatch", letters, entry, call, policy=self._policy, metrics=self._metrics
        )
        for letter, outcome in zip(letters, outcomes, strict=True):
            if outcome is None:
                self._metrics.dlq_sends.labels(letter.kind).inc()
        return outcomes

    # --- health: logged once per state change, not per attempt ------------------------

    def _call_failed(self, exc: BaseException) -> None:
        # One failed call is already botocore's attempts (standard mode) failing in a row.
        if not self.up:
            return
        self.up = False
        self._down_since = time.monotonic()
        self._metrics.dlq_up.set(0)
        log.warning(
            "dlq unavailable, holding dead letters",
            extra={"action": "dlq_down", "error": error_code(exc)},
        )

    def _call_succeeded(self) -> None:
        if self.up:
            return
        self.up = True
        self._metrics.dlq_up.set(1)
        log.warning(
            "dlq available again",
            extra={
                "action": "dlq_up",
                "down_s": round(time.monotonic() - self._down_since, 1),
                "letters_waiting": self._letters_waiting,
            },
        )
