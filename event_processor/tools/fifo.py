"""What a sender to an SQS FIFO queue must add: a message group and a deduplication id.

Used by the sensor fleet (one group per device) and by `dlq redrive` (each letter back in its
own group). SQS requires both names of a FIFO queue and its URL to end in ".fifo", so the URL
tells the kind without a call. The daemon's own FIFO rules (letters, order per group) live in
the daemon; docs/operations.md says what the tools do on FIFO queues.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Final

import orjson

FIFO_SUFFIX: Final = ".fifo"
# The group of a body whose device is unknown (not JSON, no usable device_id): one fixed group,
# so that such bodies still reach the queue, in the order sent, and are rejected there.
UNKNOWN_DEVICE_GROUP: Final = "unknown-device"
# MessageGroupId and MessageDeduplicationId: 1-128 characters, alphanumerics and punctuation
# (printable ASCII without the space).
_SQS_ID: Final = re.compile(r"[!-~]{1,128}")


def is_fifo(queue_url: str) -> bool:
    """Whether the queue is FIFO: SQS requires a FIFO queue's name to end in ".fifo"."""
    return queue_url.rstrip("/").endswith(FIFO_SUFFIX)


def usable_id(value: object) -> bool:
    """Whether `value` may be a MessageGroupId or MessageDeduplicationId as it is."""
    return isinstance(value, str) and _SQS_ID.fullmatch(value) is not None


def body_device_id(body: str) -> str | None:
    """The `device_id` a submission body names (base64 JSON as the fleet sends it, or plain
    JSON), if it is a usable group id; None otherwise."""
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raw = body.encode()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    device = doc.get("device_id") if isinstance(doc, dict) else None
    return device if usable_id(device) else None


def group_for(body: str, device_id: str | None = None) -> str:
    """A submission's MessageGroupId: the sending device (`device_id`, when known and usable),
    else the device the body names, else UNKNOWN_DEVICE_GROUP."""
    if device_id is not None and usable_id(device_id):
        return device_id
    return body_device_id(body) or UNKNOWN_DEVICE_GROUP


def body_deduplication_id(body: str) -> str:
    """A submission's MessageDeduplicationId: the SHA-256 of its body, in hex.

    Stable across retries of the same send (the same body), so SQS keeps one copy of a batch
    resent after a timeout; unique per submission, since every body differs (its
    submission_id, its time_created). Not the submission_id itself: a broken one
    ("not-an-uuid") repeats, and a seeded fleet (`--seed`, the demo) sends the same ids again
    on every run, which SQS would drop as duplicates for 5 minutes.
    """
    return hashlib.sha256(body.encode()).hexdigest()


def redrive_deduplication_id(letter_message_id: str) -> str:
    """The MessageDeduplicationId of a letter moved back by `dlq redrive`: from the letter's
    own MessageId in the DLQ, so a retried move (sent, not deleted, run again within SQS's
    5-minute window) is dropped by SQS, while a submission moved back again in a later run,
    as a new letter, is not. Never the original message's: the daemon's first copy would
    make SQS drop it."""
    return f"redrive-{letter_message_id}"
