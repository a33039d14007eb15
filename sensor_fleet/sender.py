"""Sending submissions: SendMessageBatch, every entry checked, brief outages ridden out."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from event_processor.config import Settings
from event_processor.letters import message_size
from event_processor.tools import aws

log = logging.getLogger(__name__)

# SendMessageBatch takes at most 10 entries, and at most 256 KiB of messages (bodies and
# attributes) on queues that keep the pre-2025 limit (1 MiB since): larger ones go alone.
_BATCH = 10
_BATCH_BYTES = 256 * 1024
# How long one batch keeps retrying through an outage before the fleet gives it up and
# moves on (a real sensor would spool to disk; the emulated one just reports the drop).
_OUTAGE_RIDE_S = 60.0

# SendMessage's MessageAttributes: name -> {"DataType": ..., "StringValue": ...}, as
# event_processor.signing.signature_attributes makes them.
MessageAttributes = Mapping[str, Mapping[str, str]]
# One message to send: its body and its attributes, if any.
_Outgoing = tuple[str, MessageAttributes | None]


class FailedEntries(Exception):
    """SQS accepted the call but not every entry."""


def use_localstack(flag: bool) -> bool:
    """localstack-client when asked, or when LOCALSTACK_HOST says where LocalStack is."""
    return flag or bool(os.environ.get("LOCALSTACK_HOST"))


def sqs_client(localstack: bool, settings: Settings) -> Any:
    """The tools' boto3 client, or localstack-client's when asked (it finds LocalStack itself)."""
    if use_localstack(localstack):
        import localstack_client.session  # noqa: PLC0415 - only needed against LocalStack

        config = Config(
            retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=10
        )
        session = localstack_client.session.Session(region_name=settings.aws_region)
        return session.client("sqs", config=config)
    return aws.client(settings, "sqs")


class Sender:
    def __init__(self, client: Any, queue_url: str, outage_ride_s: float = _OUTAGE_RIDE_S) -> None:
        self._client = client
        self.queue_url = queue_url
        self._outage_ride_s = outage_ride_s
        self.sent = 0
        self.dropped = 0

    def send(
        self,
        bodies: Sequence[str],
        attributes: Sequence[MessageAttributes | None] | None = None,
    ) -> list[str]:
        """Send every body (with its MessageAttributes, `attributes[i]` for `bodies[i]`, when
        given); return those SQS accepted. Never raises on AWS faults."""
        if attributes is None:
            attributes = [None] * len(bodies)
        if len(attributes) != len(bodies):
            raise ValueError(f"{len(bodies)} bodies but {len(attributes)} attribute sets")
        accepted: list[str] = []
        for batch in _batches(list(zip(bodies, attributes, strict=True))):
            accepted += self._send_batch(batch)
        self.sent += len(accepted)
        self.dropped += len(bodies) - len(accepted)
        return accepted

    def _send_batch(self, batch: list[_Outgoing]) -> list[str]:
        pending = dict(enumerate(batch))
        retrying = Retrying(
            wait=wait_random_exponential(multiplier=0.2, max=5),
            stop=stop_after_delay(self._outage_ride_s),
            retry=retry_if_exception_type((BotoCoreError, ClientError, FailedEntries)),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    response = self._client.send_message_batch(
                        QueueUrl=self.queue_url,
                        Entries=[_entry(i, outgoing) for i, outgoing in pending.items()],
                    )
                    for ok in response.get("Successful", []):
                        pending.pop(int(ok["Id"]), None)
                    if pending:
                        raise FailedEntries(f"{len(pending)} entries failed")
        except (BotoCoreError, ClientError, FailedEntries) as exc:
            log.warning(
                "dropped submissions after retrying",
                extra={"action": "dropped", "count": len(pending), "error": type(exc).__name__},
            )
        return [body for i, (body, _) in enumerate(batch) if i not in pending]


def _entry(entry_id: int, outgoing: _Outgoing) -> dict[str, Any]:
    body, attributes = outgoing
    entry: dict[str, Any] = {"Id": str(entry_id), "MessageBody": body}
    if attributes:
        entry["MessageAttributes"] = {name: dict(value) for name, value in attributes.items()}
    return entry


def _batches(outgoing: list[_Outgoing]) -> list[list[_Outgoing]]:
    """Up to 10 messages and 256 KiB a batch; a message over that goes alone."""
    batches: list[list[_Outgoing]] = []
    batch: list[_Outgoing] = []
    size = 0
    for message in outgoing:
        body, attributes = message
        message_bytes = message_size(body, attributes or {})
        if batch and (len(batch) == _BATCH or size + message_bytes > _BATCH_BYTES):
            batches.append(batch)
            batch, size = [], 0
        batch.append(message)
        size += message_bytes
    if batch:
        batches.append(batch)
    return batches
