"""Dead letters: every rejection reaches the DLQ with its reason, or is at least logged.

The letters themselves (format, packing, size) are `letters`; this module sends them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from event_processor import constants
from event_processor.batcher import Batcher, retry_entries
from event_processor.letters import DeadLetter, LetterPacker

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

    from event_processor.awsjson import DlqApi
    from event_processor.metrics import Metrics
    from event_processor.retry import RetryPolicy
    from event_processor.source import Message

log = logging.getLogger(__name__)


class DeadLetterQueue:
    """Sends dead letters in SendMessageBatch calls; without a DLQ URL it only logs them."""

    def __init__(
        self,
        client: DlqApi,
        dlq_url: str | None,
        metrics: Metrics,
        policy: RetryPolicy,
        max_message_bytes: int = constants.SQS_MAX_MESSAGE_BYTES,
    ) -> None:
        self._client = client
        self.url = dlq_url
        # The DLQ's MaximumMessageSize, read at start-up: packed letters are cut to fit it.
        self.max_message_bytes = max_message_bytes
        self._metrics = metrics
        self._policy = policy
        self._sender: Batcher[DeadLetter] = Batcher(
            self._send_batch,
            max_entries=constants.SQS_MAX_BATCH_ENTRIES,
            max_bytes=constants.SQS_MAX_BATCH_BYTES,
            size_of=lambda letter: letter.size,
        )

    def packer(self, message: Message) -> LetterPacker:
        return LetterPacker(message, self.max_message_bytes)

    async def send(self, letters: list[DeadLetter]) -> None:
        """Return once every letter is in the DLQ; raise if one could not be sent."""
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
        await self._sender.submit_many(letters)

    async def close(self) -> None:
        await self._sender.close()

    async def _send_batch(self, letters: list[DeadLetter]) -> list[BaseException | None]:
        url = self.url
        assert url is not None  # send() returns early without one

        def entry(i: int, letter: DeadLetter) -> SendMessageBatchRequestEntryTypeDef:
            return {
                "Id": str(i),
                "MessageBody": letter.body,
                "MessageAttributes": letter.attributes,
            }

        async def call(entries: list[Any]) -> Any:
            with self._metrics.aws_call("SendMessageBatch"):
                return await self._client.send_message_batch(QueueUrl=url, Entries=entries)

        outcomes = await retry_entries(
            "SendMessageBatch", letters, entry, call, policy=self._policy, metrics=self._metrics
        )
        for letter, outcome in zip(letters, outcomes, strict=True):
            if outcome is None:
                self._metrics.dlq_sends.labels(letter.kind).inc()
        return outcomes
