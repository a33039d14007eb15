"""Read-back verification: is every valid event in the stream, once, in order per submission?

Shared by the demo, the benchmark and the tests, so that "no loss, in order" means one thing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson

from event_processor.contract.parse import ParsedSubmission, parse_submission


def expected_sequences(bodies: list[str]) -> dict[str, list[int]]:
    """Each valid submission's accepted event sequences, in order, by submission id."""
    expected: dict[str, list[int]] = {}
    for body in bodies:
        parsed = parse_submission(body)
        if isinstance(parsed, ParsedSubmission) and parsed.records:
            expected[parsed.submission_id] = parsed.records.sequences
    return expected


def decode_records(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stream records (as emulator.read_stream returns them) as dicts, with their position."""
    return [
        {
            **orjson.loads(r["data"]),
            "_shard": r["shard_id"],
            "_seq": int(r["sequence_number"]),
            "_key": r["partition_key"],
        }
        for r in raw
    ]


@dataclass
class Verification:
    expected_events: int = 0
    records: int = 0
    duplicates: int = 0
    foreign: int = 0  # records of submissions this run did not send
    missing: list[tuple[str, int]] = field(default_factory=list)
    unexpected: list[tuple[str, int]] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    split_across_shards: list[str] = field(default_factory=list)
    changed_ids: list[str] = field(default_factory=list)
    # First occurrences per submission, in stream order.
    firsts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.unexpected
            or self.out_of_order
            or self.split_across_shards
            or self.changed_ids
        )

    def summary(self) -> str:
        return (
            f"expected {self.expected_events} events, stream has {self.records} records "
            f"({self.duplicates} duplicates); missing {len(self.missing)}, unexpected "
            f"{len(self.unexpected)}, out of order {len(self.out_of_order)}, split across "
            f"shards {len(self.split_across_shards)}, duplicates with a new id {len(self.changed_ids)}"
        )


def verify(records: list[dict[str, Any]], expected: dict[str, list[int]]) -> Verification:
    """Check decoded records against what was sent.

    Duplicates are allowed (delivery is at least once) but must repeat their first copy's
    event_id; order is judged on first occurrences, in shard sequence order. Records of
    submissions not in `expected` are only counted, as `foreign`.
    """
    result = Verification(expected_events=sum(len(s) for s in expected.values()))
    by_submission: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: (r["_shard"], r["_seq"])):
        if record.get("submission_id") not in expected:
            # Another run's (a reused LocalStack stream): neither ours to count nor to judge.
            result.foreign += 1
            continue
        result.records += 1
        by_submission.setdefault(record["submission_id"], []).append(record)
    for submission_id, recs in by_submission.items():
        if len({r["_shard"] for r in recs}) > 1:
            result.split_across_shards.append(submission_id)
        seen: dict[int, str] = {}
        order: list[int] = []
        for r in recs:
            if r["sequence"] in seen:
                result.duplicates += 1
                if seen[r["sequence"]] != r["event_id"]:
                    result.changed_ids.append(r["event_id"])
                continue
            seen[r["sequence"]] = r["event_id"]
            order.append(r["sequence"])
        if order != sorted(order):
            result.out_of_order.append(submission_id)
        result.firsts[submission_id] = order
    for submission_id, sequences in expected.items():
        found = set(result.firsts.get(submission_id, []))
        result.missing.extend((submission_id, s) for s in sequences if s not in found)
    for submission_id, order in result.firsts.items():
        wanted = set(expected[submission_id])
        result.unexpected.extend((submission_id, s) for s in order if s not in wanted)
    return result


def expected_device_order(bodies: list[str]) -> dict[str, list[str]]:
    """Each device's valid submissions that have events, by submission id, in the order sent
    (`bodies` in send order)."""
    order: dict[str, list[str]] = {}
    for body in bodies:
        parsed = parse_submission(body)
        if isinstance(parsed, ParsedSubmission) and parsed.records:
            order.setdefault(parsed.device_id, []).append(parsed.submission_id)
    return order


@dataclass
class DeviceOrder:
    """Order across each device's submissions in the stream (a FIFO source with a message
    group per device, and PARTITION_KEY=device_id: one shard per device)."""

    devices: int = 0  # devices with at least one submission in the stream
    pairs: int = 0  # consecutive pairs of a device's submissions, both in the stream
    # (device, earlier, later): the later submission's first record is not after the earlier
    # one's last record on the same shard (interleaved or reversed, or on another shard).
    out_of_order: list[tuple[str, str, str]] = field(default_factory=list)
    split_across_shards: list[str] = field(default_factory=list)  # devices on several shards

    @property
    def ok(self) -> bool:
        return not (self.out_of_order or self.split_across_shards)

    def summary(self) -> str:
        return (
            f"{self.devices} devices, {self.pairs} consecutive pairs of a device's submissions:"
            f" interleaved or reversed {len(self.out_of_order)}, devices split across shards"
            f" {len(self.split_across_shards)}"
        )


def verify_device_order(
    records: list[dict[str, Any]], expected: dict[str, list[str]]
) -> DeviceOrder:
    """Check that each device's submissions follow each other in the stream in the order
    sent (`expected`, from expected_device_order): for every consecutive pair, every record
    of the earlier one comes before every record of the later one, on the same shard.

    Judged on first occurrences (a redelivered duplicate repeats an event already there);
    submissions absent from the stream are skipped (`verify` reports them as missing).
    """
    first: dict[tuple[str, int], tuple[str, int]] = {}  # (submission, sequence) -> position
    for record in sorted(records, key=lambda r: (r["_shard"], r["_seq"])):
        key = (record.get("submission_id"), record.get("sequence"))
        if isinstance(key[0], str) and isinstance(key[1], int) and key not in first:
            first[(key[0], key[1])] = (record["_shard"], record["_seq"])
    spans: dict[str, tuple[str, int, int]] = {}  # submission -> (shard, first seq, last seq)
    shards: dict[str, set[str]] = {}
    for (submission_id, _), (shard, seq) in first.items():
        shards.setdefault(submission_id, set()).add(shard)
        _, low, high = spans.get(submission_id, (shard, seq, seq))
        spans[submission_id] = (shard, min(low, seq), max(high, seq))
    result = DeviceOrder()
    for device, submissions in expected.items():
        present = [s for s in submissions if s in spans]
        if not present:
            continue
        result.devices += 1
        if len(set().union(*(shards[s] for s in present))) > 1:
            result.split_across_shards.append(device)
        for earlier, later in itertools.pairwise(present):
            result.pairs += 1
            (shard_a, _, last_a), (shard_b, first_b, _) = spans[earlier], spans[later]
            if shard_a != shard_b or last_a >= first_b:
                result.out_of_order.append((device, earlier, later))
    return result
