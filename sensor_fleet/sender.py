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
from event_processor.contract.letters import message_size
from event_processor.tools import aws, fifo

log = logging.getLogger(__name__)

# SendMessageBatch takes at most 10 entries, and at most 256 KiB of messages (bodies and
# attributes) on queues that keep the pre-2025 limit (1 MiB since): larger ones go alone.
_BATCH = 10
_BATCH_BYTES = 256 * 1024
# How long one batch keeps retrying through an outage before the fleet gives it up and
# moves on (a real sensor would spool to disk; the emulated one just reports the drop).
_OUTAGE_RIDE_S = 60.0

# SendMessage's MessageAttributes: name -> {"DataType": ..., "StringValue": ...}, as
# event_processor.contract.signing.signature_attributes makes them.
MessageAttributes = Mapping[str, Mapping[str, str]]
# One message to send: its body, its attributes (if any) and its message group (FIFO queues
# only; None elsewhere).
_Outgoing = tuple[str, MessageAttributes | None, str | None]


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
    """Sends submissions in the order given, one batch after another.

    To a FIFO queue (its URL ends in ".fifo") every entry carries a MessageGroupId, the device
    that sends it, and a MessageDeduplicationId, the SHA-256 of its body (`fifo`): SQS then
    keeps each device's submissions in the order sent, and one copy of an entry sent again by
    a retry. Callers keep a device's submissions in one Sender call or in calls one after
    another, never concurrently.
    """

    def __init__(self, client: Any, queue_url: str, outage_ride_s: float = _OUTAGE_RIDE_S) -> None:
        self._client = client
        self.queue_url = queue_url
        self.fifo = fifo.is_fifo(queue_url)
        self._outage_ride_s = outage_ride_s
        self.sent = 0
        self.dropped = 0
        # FIFO: entries SQS accepted ahead of an earlier entry of their group that failed and
        # was sent again after them (a partial batch failure): their group's order is broken.
        self.overtaken = 0

    def send(
        self,
        bodies: Sequence[str],
        attributes: Sequence[MessageAttributes | None] | None = None,
        devices: Sequence[str | None] | None = None,
    ) -> list[str]:
        """Send every body (with its MessageAttributes, `attributes[i]` for `bodies[i]`, when
        given); return those SQS accepted. Never raises on AWS faults.

        `devices[i]`: the device sending `bodies[i]`, its message group on a FIFO queue; where
        not given, the device the body names (`fifo.group_for`). Ignored on standard queues.
        """
        count = len(bodies)
        if attributes is None:
            attributes = [None] * count
        if devices is None:
            devices = [None] * count
        if len(attributes) != count or len(devices) != count:
            raise ValueError(
                f"{count} bodies but {len(attributes)} attribute sets and {len(devices)} devices"
            )
        groups = [
            fifo.group_for(body, device) if self.fifo else None
            for body, device in zip(bodies, devices, strict=True)
        ]
        accepted: list[str] = []
        for batch in _batches(list(zip(bodies, attributes, groups, strict=True))):
            accepted += self._send_batch(batch)
        self.sent += len(accepted)
        self.dropped += count - len(accepted)
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
                    accepted = [int(ok["Id"]) for ok in response.get("Successful", [])]
                    for i in accepted:
                        pending.pop(i, None)
                    if pending and self.fifo:
                        self._count_overtaken(batch, accepted, pending)
                    if pending:
                        raise FailedEntries(f"{len(pending)} entries failed")
        except (BotoCoreError, ClientError, FailedEntries) as exc:
            log.warning(
                "dropped submissions after retrying",
                extra={"action": "dropped", "count": len(pending), "error": type(exc).__name__},
            )
        return [body for i, (body, _, _) in enumerate(batch) if i not in pending]

    def _count_overtaken(
        self, batch: list[_Outgoing], accepted: list[int], pending: dict[int, _Outgoing]
    ) -> None:
        """Count (and warn about) entries just accepted behind an earlier one of their group
        that failed: that one goes again after them. SQS reports each entry of a batch on its
        own, so a partial failure cannot be undone; it is rare (throttling, internal errors)."""
        first_failed: dict[str, int] = {}
        for i in sorted(pending):
            group = batch[i][2]
            if group is not None:
                first_failed.setdefault(group, i)
        overtaken = 0
        for i in accepted:
            group = batch[i][2]
            if group is not None and i > first_failed.get(group, i):
                overtaken += 1
        if overtaken:
            self.overtaken += overtaken
            log.warning(
                "submissions accepted ahead of an earlier one of their device that failed",
                extra={"action": "overtaken", "count": overtaken},
            )


def _entry(entry_id: int, outgoing: _Outgoing) -> dict[str, Any]:
    body, attributes, group = outgoing
    entry: dict[str, Any] = {"Id": str(entry_id), "MessageBody": body}
    if attributes:
        entry["MessageAttributes"] = {name: dict(value) for name, value in attributes.items()}
    if group is not None:
        entry["MessageGroupId"] = group
        entry["MessageDeduplicationId"] = fifo.body_deduplication_id(body)
    return entry


def _batches(outgoing: list[_Outgoing]) -> list[list[_Outgoing]]:
    """Up to 10 messages and 256 KiB a batch; a message over that goes alone."""
    batches: list[list[_Outgoing]] = []
    batch: list[_Outgoing] = []
    size = 0
    for message in outgoing:
        body, attributes, _ = message
        message_bytes = message_size(body, attributes or {})
        if batch and (len(batch) == _BATCH or size + message_bytes > _BATCH_BYTES):
            batches.append(batch)
            batch, size = [], 0
        batch.append(message)
        size += message_bytes
    if batch:
        batches.append(batch)
    return batches
