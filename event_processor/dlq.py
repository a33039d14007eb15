"""Dead letters: every rejection reaches the DLQ with its reason, or is at least logged.

A rejected submission goes with its original body and message attributes, plus `reason`,
`detail`, `source_message_id` and `receive_count`. A rejected event of a valid submission
goes as a JSON document naming the event, its reason, its submission and its sequence.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from event_processor import constants
from event_processor.batcher import Batcher, retry_entries
from event_processor.models import Rejection, Submission

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import (
        MessageAttributeValueTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

    from event_processor.metrics import Metrics
    from event_processor.retry import RetryPolicy
    from event_processor.source import Message

log = logging.getLogger(__name__)

# SQS allows 10 message attributes; ours take 4, the original message's may fill the rest.
_MAX_ATTRIBUTES = 10
# A rejected event's own JSON is cut to a preview beyond this, so that the dead letter
# itself always fits in an SQS message (attributes and envelope need the rest).
_EVENT_PREVIEW_CHARS = 64 * 1024
# Levels of nesting kept of an event too deep to encode whole.
_MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class DeadLetter:
    kind: str  # "submission" or "event": the dlq_messages_sent label
    body: str
    attributes: dict[str, MessageAttributeValueTypeDef]

    @property
    def size(self) -> int:
        # SQS counts the body plus every attribute's name, type and value toward the limit.
        size = len(self.body.encode())
        for name, value in self.attributes.items():
            size += len(name.encode()) + len(value["DataType"])
            size += len(str(value.get("StringValue", "")).encode())
            binary = value.get("BinaryValue")
            if isinstance(binary, bytes | bytearray):
                size += len(binary)
        return size


def _string(value: str) -> MessageAttributeValueTypeDef:
    return {"DataType": "String", "StringValue": value}


def _reason_attributes(message: Message, rejection: Rejection) -> dict[str, Any]:
    detail = rejection.detail[: constants.DLQ_DETAIL_MAX_CHARS] or "-"  # SQS refuses ""
    return {
        "reason": _string(rejection.reason.value),
        "detail": _string(detail),
        "source_message_id": _string(message.message_id),
        "receive_count": {"DataType": "Number", "StringValue": str(message.receive_count)},
    }


def _event_json(event: Any) -> tuple[str, bool]:
    """The event as ASCII JSON, and whether it had to be cut.

    ensure_ascii: SQS refuses some code points (U+FFFE, lone surrogates) in bodies; escaped,
    every string an event can hold is a valid SQS body. An event nested deeper than the
    encoder's recursion allows (orjson parses 1,024 levels) is cut at _MAX_DEPTH levels.
    """
    try:
        return json.dumps(event, ensure_ascii=True), False
    except RecursionError:
        return json.dumps(_cut(event, _MAX_DEPTH), ensure_ascii=True), True


def _cut(value: Any, depth: int) -> Any:
    if not isinstance(value, list | dict):
        return value
    if depth == 0:
        return "...(nested deeper, cut)"
    if isinstance(value, list):
        return [_cut(v, depth - 1) for v in value]
    return {k: _cut(v, depth - 1) for k, v in value.items()}


def submission_letter(message: Message, rejection: Rejection) -> DeadLetter:
    """The original body and attributes, with the reason added as attributes."""
    attributes = _reason_attributes(message, rejection)
    for name, value in message.attributes.items():
        if len(attributes) >= _MAX_ATTRIBUTES:
            break  # ours take precedence; SQS would refuse an 11th attribute
        if name not in attributes:
            attributes[name] = value
    return DeadLetter("submission", message.body, attributes)


def event_letters(message: Message, submission: Submission) -> list[DeadLetter]:
    """One dead letter per rejected event; its JSON is ASCII so that any event fits SQS."""
    letters = []
    for rejected in submission.rejected:
        event_json, cut = _event_json(rejected.event)
        document: dict[str, Any] = {
            "reason": rejected.rejection.reason.value,
            "field": rejected.rejection.field,
            "detail": rejected.rejection.detail,
            "submission_id": submission.submission_id,
            "device_id": submission.device_id,
            "sequence": rejected.sequence,
            "event_type": rejected.event_type[:256],
            "source_message_id": message.message_id,
        }
        if cut or len(event_json) > _EVENT_PREVIEW_CHARS:
            document["event_truncated"] = True
            document["event_preview"] = event_json[:_EVENT_PREVIEW_CHARS]
            body = json.dumps(document, ensure_ascii=True)
        else:
            # Splice the already-encoded event in rather than encoding it twice.
            body = json.dumps(document, ensure_ascii=True)[:-1] + ', "event": ' + event_json + "}"
        letters.append(DeadLetter("event", body, _reason_attributes(message, rejected.rejection)))
    return letters


class DeadLetterQueue:
    """Sends dead letters in SendMessageBatch calls; without a DLQ URL it only logs them."""

    def __init__(
        self,
        client: SQSClient,
        dlq_url: str | None,
        metrics: Metrics,
        policy: RetryPolicy,
    ) -> None:
        self._client = client
        self.url = dlq_url
        self._metrics = metrics
        self._policy = policy
        self._sender: Batcher[DeadLetter] = Batcher(
            self._send_batch,
            max_entries=constants.SQS_MAX_BATCH_ENTRIES,
            max_bytes=constants.SQS_MAX_BATCH_BYTES,
            size_of=lambda letter: letter.size,
        )

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
