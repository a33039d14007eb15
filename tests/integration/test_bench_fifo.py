"""The bench's `fifo` scenario: its grouped backlog loaded into the emulator, its order read back."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson

from devworld.bench.fifo import GroupedBacklog, grouped_backlog, load_grouped
from devworld.emulator import Emulator, World
from devworld.verify import verify_device_order
from event_processor.contract.parse import ParsedSubmission, parse_submission
from tests.helpers import client, drain_queue, stream_records


def test_a_fifo_backlog_arrives_grouped_by_device_in_send_order(
    emulator: Emulator, make_world: Callable[..., World]
) -> None:
    """Each message once, in its device's group with its dedup id, each group in send order."""
    world = make_world(fifo=True)
    backlog = grouped_backlog(devices=3, per_device=4, seed=5)
    load_grouped(emulator, world, backlog)
    messages = drain_queue(emulator, world.queue_url)
    assert sorted(m["Body"] for m in messages) == sorted(backlog.bodies)
    sent = {s.body: s for s in backlog.sent}
    received: dict[str, list[str]] = {}
    for message in messages:
        attributes = message["Attributes"]
        assert attributes["MessageGroupId"] == sent[message["Body"]].device_id
        assert attributes["MessageDeduplicationId"] == sent[message["Body"]].deduplication_id
        received.setdefault(attributes["MessageGroupId"], []).append(message["Body"])
    wanted: dict[str, list[str]] = {}
    for s in backlog.sent:
        wanted.setdefault(s.device_id, []).append(s.body)
    assert received == wanted
    assert len(wanted) == 3


def test_bodies_with_the_same_broken_id_are_not_deduplicated_away(
    emulator: Emulator, make_world: Callable[..., World]
) -> None:
    """Half the fields broken: bodies sharing "not-an-uuid" get distinct dedup ids, all kept."""
    world = make_world(fifo=True)
    backlog = grouped_backlog(devices=2, per_device=10, seed=7, invalid_probability=0.5)
    broken = [m for m in backlog.sent if _submission_id(m.body) == "not-an-uuid"]
    assert len(broken) >= 2, "the seed must give several broken ids"
    assert len({m.deduplication_id for m in backlog.sent}) == len(backlog.sent)
    load_grouped(emulator, world, backlog)  # raises if SQS dropped one as a duplicate
    assert len(drain_queue(emulator, world.queue_url)) == len(backlog.sent)


def test_a_standard_world_gets_the_same_backlog_without_groups(
    emulator: Emulator, make_world: Callable[..., World]
) -> None:
    """On a standard queue every body arrives once, with no group attributes."""
    world = make_world()
    backlog = grouped_backlog(devices=2, per_device=3, seed=9)
    load_grouped(emulator, world, backlog)
    messages = drain_queue(emulator, world.queue_url)
    assert sorted(m["Body"] for m in messages) == sorted(backlog.bodies)
    assert not any("MessageGroupId" in m["Attributes"] for m in messages)


def test_the_read_back_passes_send_order_and_counts_what_breaks_it(
    emulator: Emulator, make_world: Callable[..., World]
) -> None:
    """Records put in send order judge ok; two submissions of a device reversed, or their
    records interleaved, are a bad pair each; a submission never put is not judged."""
    backlog = grouped_backlog(devices=2, per_device=3, seed=3, invalid_probability=0.0)
    by_device = backlog.published_by_device()
    in_order = make_world()
    for message in backlog.sent:
        _put_records(emulator, in_order, message.device_id, _records(message.body))
    good = verify_device_order(stream_records(emulator, in_order), by_device)
    assert good.ok, good.summary()
    assert (good.devices, good.pairs, len(good.out_of_order)) == (2, 4, 0)

    device, other = sorted(by_device)
    first, second, third = (_body(backlog, device, sid) for sid in by_device[device])
    swapped = make_world()
    for body in (second, first, third):  # device's 1st and 2nd submissions reversed
        _put_records(emulator, swapped, device, _records(body))
    # other's 1st and 2nd interleaved event by event; its 3rd never reaches the stream.
    one, two = (_records(_body(backlog, other, sid)) for sid in by_device[other][:2])
    mixed = [record for pair in zip(one, two, strict=False) for record in pair]
    _put_records(emulator, swapped, other, mixed + one[len(two) :] + two[len(one) :])
    records = stream_records(emulator, swapped)
    bad = verify_device_order(records, by_device)
    assert not bad.ok
    # device: (1st, 2nd) bad, (2nd, 3rd) fine; other: (1st, 2nd) bad, its 3rd never put.
    assert (bad.pairs, len(bad.out_of_order)) == (3, 2), bad.summary()
    assert {(d, a) for d, a, _ in bad.out_of_order} == {
        (device, by_device[device][0]),
        (other, by_device[other][0]),
    }
    assert by_device[other][2] not in {r["submission_id"] for r in records}


def _submission_id(body: str) -> Any:
    return orjson.loads(base64.b64decode(body))["submission_id"]


def _body(backlog: GroupedBacklog, device_id: str, submission_id: str) -> str:
    for message in backlog.sent:
        parsed = parse_submission(message.body)
        if isinstance(parsed, ParsedSubmission) and parsed.submission_id == submission_id:
            assert message.device_id == device_id
            return message.body
    raise AssertionError(f"{submission_id} is not in the backlog")


def _records(body: str) -> list[dict[str, Any]]:
    """A submission's records as the daemon writes them, in brief: one per event, in order."""
    parsed = parse_submission(body)
    assert isinstance(parsed, ParsedSubmission)
    return [
        {
            "submission_id": parsed.submission_id,
            "sequence": event.sequence,
            "event_id": f"{parsed.submission_id}-{event.sequence}",
        }
        for event in parsed.events
    ]


def _put_records(
    emulator: Emulator, world: World, device_id: str, records: list[dict[str, Any]]
) -> None:
    """One PutRecord at a time, keyed by device (PARTITION_KEY=device_id): one shard a device."""
    kinesis: Any = client(emulator, "kinesis")
    for data in records:
        kinesis.put_record(
            StreamName=world.stream_name, Data=orjson.dumps(data), PartitionKey=device_id
        )
