"""A grouped backlog for the bench's `fifo` scenario: loading it, and reading its order back.

D devices each make S submissions in order, and the fleet sends them round by round (every
device's first, then every device's second, ...), as a fleet sending over time does. On a
FIFO queue each entry carries MessageGroupId = its device and MessageDeduplicationId = its
submission id, so SQS hands a device's submissions out in the order sent; the same backlog
goes to a standard queue without them. The read-back judges what issue 22 asks of the stream:
per device, every record of a submission lies before every record of the device's next one.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from devworld.emulator import Emulator, World, queue_depth
from event_processor.models import Submission, parse_submission
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
        """Per device, in send order, the ids of its submissions that have events to publish
        (a submission rejected whole, or left with no valid event, has no record to order)."""
        by_device: dict[str, list[str]] = {}
        for message in self.sent:
            parsed = parse_submission(message.body)
            if isinstance(parsed, Submission) and parsed.events:
                by_device.setdefault(message.device_id, []).append(parsed.submission_id)
        return by_device


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
            sent.append(Sent(device_id, deduplication_id(doc["submission_id"], body), body))
    return GroupedBacklog(tuple(sent))


def deduplication_id(submission_id: Any, body: str) -> str:
    """The submission id; for a body whose id is broken on purpose (several share the same
    "not-an-uuid"), the SHA-256 of the body, so that SQS does not drop one as a duplicate."""
    try:
        return str(uuid.UUID(str(submission_id)))
    except ValueError:
        return hashlib.sha256(body.encode()).hexdigest()


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


@dataclass
class GroupOrder:
    """Per device, consecutive published submissions compared by their records' positions."""

    devices: int = 0
    # Consecutive pairs (A sent before B, both with records) judged on one shard.
    pairs: int = 0
    # Pairs whose records interleave, or where B's came first.
    out_of_order: int = 0
    # Devices whose records are on more than one shard (their pairs cannot be judged).
    split_devices: list[str] = field(default_factory=list)
    # Submissions with events to publish and no record at all.
    unpublished: int = 0

    @property
    def ok(self) -> bool:
        return not (self.out_of_order or self.split_devices or self.unpublished)

    def summary(self) -> str:
        return (
            f"{self.devices} devices, {self.pairs} consecutive pairs of a device's submissions: "
            f"{self.out_of_order} interleaved or reversed; {len(self.split_devices)} devices on "
            f"more than one shard; {self.unpublished} submissions with no record"
        )


def group_order(records: Iterable[dict[str, Any]], backlog: GroupedBacklog) -> GroupOrder:
    """Judge decoded records (devworld.verify.decode_records) against the backlog's per-device
    send order. A duplicate is judged by its first copy, as verify() judges order within a
    submission; records of other submissions are ignored."""
    # (shard, sequence number) of each event's first copy, by submission.
    firsts: dict[str, dict[int, tuple[str, int]]] = {}
    for record in records:
        placed = (record["_shard"], record["_seq"])
        events = firsts.setdefault(record["submission_id"], {})
        if record["sequence"] not in events or placed[1] < events[record["sequence"]][1]:
            events[record["sequence"]] = placed
    by_device = backlog.published_by_device()
    result = GroupOrder(devices=len(by_device))
    for device_id, submission_ids in by_device.items():
        spans: list[tuple[int, int]] = []
        shards: set[str] = set()
        for submission_id in submission_ids:
            positions = list(firsts.get(submission_id, {}).values())
            if not positions:
                result.unpublished += 1
                continue
            shards.update(shard for shard, _ in positions)
            sequences = [seq for _, seq in positions]
            spans.append((min(sequences), max(sequences)))
        if len(shards) > 1:
            result.split_devices.append(device_id)
            continue
        for (_, last), (first, _) in itertools.pairwise(spans):
            result.pairs += 1
            if first < last:
                result.out_of_order += 1
    return result
