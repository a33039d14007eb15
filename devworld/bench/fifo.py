"""A grouped backlog for the bench's `fifo` scenario: loading it, and reading its order back.

D devices each make S submissions in order, and the fleet sends them round by round (every
device's first, then every device's second, ...), as a fleet sending over time does. On a
FIFO queue each entry carries MessageGroupId = its device and the fleet's deduplication id,
so SQS hands a device's submissions out in the order sent; the same backlog goes to a
standard queue without them. The read-back is devworld.verify's per-device order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from devworld.emulator import Emulator, World, queue_depth
from devworld.verify import expected_device_order
from event_processor.tools.fifo import body_deduplication_id
from sensor_fleet.generator import device_ids, encode, make_submission

# SendMessageBatch takes at most 10 entries (fleet bodies are ~2 KB: far under its byte limit).
_BATCH_ENTRIES = 10


@dataclass(frozen=True)
class Sent:
    """One message of the backlog: the device that sends it (its group), its dedup id, body."""

    device_id: str
    deduplication_id: str
    body: str


@dataclass(frozen=True)
class GroupedBacklog:
    """Every message in send order; a device's messages are in the order it made them."""

    sent: tuple[Sent, ...]

    @property
    def bodies(self) -> list[str]:
        return [message.body for message in self.sent]

    @property
    def groups(self) -> int:
        return len({message.device_id for message in self.sent})

    def published_by_device(self) -> dict[str, list[str]]:
        """Per device, in send order, the ids of its submissions that have events to publish."""
        return expected_device_order(self.bodies)


def grouped_backlog(
    devices: int, per_device: int, seed: int, invalid_probability: float = 0.01
) -> GroupedBacklog:
    """`devices` x `per_device` fleet submissions (3-5 events of each type, fields broken with
    `invalid_probability`, as the throughput table's backlog), sent round by round, the
    devices in a shuffled order each round."""
    rng = random.Random(seed)
    fleet = device_ids(devices, seed)
    sent: list[Sent] = []
    for _ in range(per_device):
        for device_id in rng.sample(fleet, len(fleet)):
            doc = make_submission(rng, device_id, invalid_probability)
            body = encode(doc)
            sent.append(Sent(device_id, body_deduplication_id(body), body))
    return GroupedBacklog(tuple(sent))


def load_grouped(emulator: Emulator, world: World, backlog: GroupedBacklog) -> None:
    """Send the backlog to the world's (empty) queue in order, one batch at a time; on a FIFO
    queue with each message's group and deduplication id. Raises unless every message is there
    (SQS answers a deduplicated message as sent: the queue's depth is what tells)."""
    sqs = emulator.boto3_client("sqs")
    sent = backlog.sent
    for start in range(0, len(sent), _BATCH_ENTRIES):
        batch = sent[start : start + _BATCH_ENTRIES]
        entries: list[dict[str, Any]] = []
        for index, message in enumerate(batch):
            entry: dict[str, Any] = {"Id": str(index), "MessageBody": message.body}
            if world.fifo:
                entry["MessageGroupId"] = message.device_id
                entry["MessageDeduplicationId"] = message.deduplication_id
            entries.append(entry)
        response = sqs.send_message_batch(QueueUrl=world.queue_url, Entries=entries)
        if response.get("Failed"):
            raise RuntimeError(f"backlog batch at {start} failed: {response['Failed']}")
    depth = queue_depth(sqs, world.queue_url)
    if depth != len(sent):
        raise RuntimeError(f"sent {len(sent)} backlog messages, the queue holds {depth}")
