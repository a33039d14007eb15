"""Sending submissions: SendMessageBatch, every entry checked, brief outages ridden out."""

from __future__ import annotations

import logging
import os
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from event_processor.config import Settings
from event_processor.tools import aws

log = logging.getLogger(__name__)

# SendMessageBatch takes at most 10 entries, and at most 256 KiB of bodies on queues that
# keep the pre-2025 limit (1 MiB since): larger bodies go in batches of their own.
_BATCH = 10
_BATCH_BYTES = 256 * 1024
# How long one batch keeps retrying through an outage before the fleet gives it up and
# moves on (a real sensor would spool to disk; the emulated one just reports the drop).
_OUTAGE_RIDE_S = 60.0


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

    def send(self, bodies: list[str]) -> list[str]:
        """Send every body; return those SQS accepted. Never raises on AWS faults."""
        accepted: list[str] = []
        for batch in _batches(bodies):
            accepted += self._send_batch(batch)
        self.sent += len(accepted)
        self.dropped += len(bodies) - len(accepted)
        return accepted

    def _send_batch(self, bodies: list[str]) -> list[str]:
        pending = dict(enumerate(bodies))
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
                        Entries=[{"Id": str(i), "MessageBody": b} for i, b in pending.items()],
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
        return [body for i, body in enumerate(bodies) if i not in pending]


def _batches(bodies: list[str]) -> list[list[str]]:
    """Up to 10 bodies and 256 KiB a batch; a body over that goes alone."""
    batches: list[list[str]] = []
    batch: list[str] = []
    size = 0
    for body in bodies:
        body_size = len(body.encode())
        if batch and (len(batch) == _BATCH or size + body_size > _BATCH_BYTES):
            batches.append(batch)
            batch, size = [], 0
        batch.append(body)
        size += body_size
    if batch:
        batches.append(batch)
    return batches
