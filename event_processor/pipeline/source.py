"""SQS source: receive, delete, and keep in-flight messages invisible (the heartbeat).

Deletes and visibility changes go through batch calls and every entry's result is checked:
a 200 response can still carry failed entries, and a delete we assume but never made turns
into a duplicate after the visibility timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from event_processor import constants
from event_processor.pipeline.batcher import Batcher, retry_entries
from event_processor.retry import RetryPolicy

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
        ReceiveMessageRequestTypeDef,
    )

    from event_processor.aws.ports import SqsApi
    from event_processor.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Message:
    """An SQS message we hold: it stays ours while its visibility window is open."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at_s: float | None  # SentTimestamp, wall clock, for the end-to-end latency metric
    attributes: dict[str, Any]  # MessageAttributes, forwarded to the DLQ as they came
    received_at: float  # monotonic
    visible_until: float  # monotonic
    extensions: int = field(default=0)
    group_id: str | None = None  # MessageGroupId: a FIFO source's messages have one


class SqsSource:
    def __init__(
        self,
        client: SqsApi,
        queue_url: str,
        metrics: Metrics,
        policy: RetryPolicy,
        *,
        wait_time_s: int,
        visibility_timeout_s: int,
        fifo: bool = False,
    ) -> None:
        self._client = client
        self.queue_url = queue_url
        # A FIFO queue's messages come with their group (groups.py orders by it).
        self.fifo = fifo
        self._system_attributes: list[Any] = ["ApproximateReceiveCount", "SentTimestamp"]
        if fifo:
            self._system_attributes.append("MessageGroupId")
        self._metrics = metrics
        self._policy = policy
        self._wait_time_s = wait_time_s
        self.visibility_timeout_s = visibility_timeout_s
        self._deleter: Batcher[Message] = Batcher(
            self._delete_batch, max_entries=constants.SQS_MAX_BATCH_ENTRIES
        )

    async def receive(self, max_messages: int) -> list[Message]:
        """One long poll. Errors propagate: the receiver loop owns outage handling."""
        request: ReceiveMessageRequestTypeDef = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": self._wait_time_s,
            "VisibilityTimeout": self.visibility_timeout_s,
            "MessageSystemAttributeNames": self._system_attributes,
            "MessageAttributeNames": ["All"],
        }
        if self.fifo:
            # botocore resends this very request when an answer is lost (a reset, a 5xx): with
            # the same attempt id SQS answers with the same messages, rather than keeping them
            # (and so their whole groups) hidden until their visibility timeout runs out.
            request["ReceiveRequestAttemptId"] = uuid.uuid4().hex
        with self._metrics.aws_call("ReceiveMessage"):
            response = await self._client.receive_message(**request)
        now = time.monotonic()
        messages = []
        for raw in response.get("Messages", []):
            system = raw.get("Attributes", {})
            sent_ms = system.get("SentTimestamp")
            messages.append(
                Message(
                    message_id=raw["MessageId"],
                    receipt_handle=raw["ReceiptHandle"],
                    body=raw.get("Body", ""),
                    receive_count=int(system.get("ApproximateReceiveCount", "1")),
                    sent_at_s=int(sent_ms) / 1000 if sent_ms else None,
                    attributes=dict(raw.get("MessageAttributes", {})),
                    received_at=now,
                    visible_until=now + self.visibility_timeout_s,
                    group_id=system.get("MessageGroupId"),
                )
            )
        self._metrics.messages_received.inc(len(messages))
        return messages

    async def delete(self, message: Message) -> None:
        """Delete once the message's work is done; batched with concurrent deletes."""
        await self._deleter.submit(message)

    async def change_visibility(
        self, messages: list[Message], timeout_s: int, *, in_order: bool = False
    ) -> list[Message]:
        """Set the visibility of up to any number of messages; returns those that took it.
        `in_order`: batch after batch, so that messages are released in the order given."""
        chunks = [
            messages[start : start + constants.SQS_MAX_BATCH_ENTRIES]
            for start in range(0, len(messages), constants.SQS_MAX_BATCH_ENTRIES)
        ]
        if in_order:
            results = [await self._visibility_batch(chunk, timeout_s) for chunk in chunks]
        else:
            # Concurrently: with hundreds in flight, one call after another would take longer
            # than the half visibility window the heartbeat leaves itself.
            results = await asyncio.gather(*(self._visibility_batch(c, timeout_s) for c in chunks))
        return [
            m
            for chunk, outcomes in zip(chunks, results, strict=True)
            for m, outcome in zip(chunk, outcomes, strict=True)
            if outcome is None
        ]

    async def close(self) -> None:
        await self._deleter.close()

    # --- batch calls with per-entry retries ---------------------------------------------

    async def _delete_batch(self, messages: list[Message]) -> list[BaseException | None]:
        def entry(i: int, m: Message) -> DeleteMessageBatchRequestEntryTypeDef:
            return {"Id": str(i), "ReceiptHandle": m.receipt_handle}

        async def call(entries: list[Any]) -> Any:
            with self._metrics.aws_call("DeleteMessageBatch"):
                return await self._client.delete_message_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )

        outcomes = await retry_entries(
            "DeleteMessageBatch", messages, entry, call, policy=self._policy, metrics=self._metrics
        )
        self._metrics.deletes_failed.inc(sum(1 for o in outcomes if o is not None))
        return outcomes

    async def _visibility_batch(
        self, messages: list[Message], timeout_s: int
    ) -> list[BaseException | None]:
        def entry(i: int, m: Message) -> ChangeMessageVisibilityBatchRequestEntryTypeDef:
            return {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": timeout_s}

        async def call(entries: list[Any]) -> Any:
            with self._metrics.aws_call("ChangeMessageVisibilityBatch"):
                return await self._client.change_message_visibility_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )

        return await retry_entries(
            "ChangeMessageVisibilityBatch",
            messages,
            entry,
            call,
            policy=self._policy,
            metrics=self._metrics,
        )
