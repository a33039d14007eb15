"""devworld.verify's order across a device's submissions, on records made by hand."""

from __future__ import annotations

from typing import Any

from devworld.verify import expected_device_order, verify_device_order
from tests.factories import encode, new_process, submission

DEVICE = "6f1f2f4c-5a4e-4c53-9d43-2a8c8f6f3b11"


def record(submission_id: str, sequence: int, seq: int, shard: str = "shard-0") -> dict[str, Any]:
    """A decoded stream record as verify reads it: its submission, event and position."""
    return {"submission_id": submission_id, "sequence": sequence, "_shard": shard, "_seq": seq}


def test_expected_device_order_keeps_the_send_order_of_valid_submissions() -> None:
    """Per device, the valid submissions with events, in the order sent; rejected ones out."""
    a1, a2 = submission(device_id=DEVICE), submission(device_id=DEVICE)
    broken = submission(device_id=DEVICE, submission_id="not-an-uuid")
    other = submission({"new_process": [new_process()]})
    bodies = [encode(d) for d in (a2, broken, other, a1)]
    assert expected_device_order(bodies) == {
        DEVICE: [a2["submission_id"], a1["submission_id"]],
        other["device_id"]: [other["submission_id"]],
    }


def test_device_order_counts_interleaved_reversed_and_split_pairs() -> None:
    """In order: no violation. Interleaved (a record of the next before the last of the
    previous), reversed, or on another shard: each pair counted; duplicates are ignored."""
    expected = {"d1": ["a", "b", "c"], "d2": ["x", "y"], "d3": ["p", "q"]}
    records = [
        record("a", 0, 1), record("a", 1, 2), record("b", 0, 3), record("b", 1, 4),
        record("a", 1, 9),  # a redelivered duplicate: not judged
        record("c", 0, 5),
        record("y", 0, 10), record("x", 0, 11),  # reversed
        record("p", 0, 20), record("q", 0, 1, shard="shard-1"),  # split
    ]  # fmt: skip
    result = verify_device_order(records, expected)
    assert (result.devices, result.pairs) == (3, 4)
    assert result.out_of_order == [("d2", "x", "y"), ("d3", "p", "q")]
    assert result.split_across_shards == ["d3"]
    assert not result.ok
    interleaved = [record("a", 0, 1), record("b", 0, 2), record("a", 1, 3)]
    assert verify_device_order(interleaved, {"d1": ["a", "b"]}).out_of_order == [("d1", "a", "b")]
    assert verify_device_order(records[:6], {"d1": ["a", "b", "c"]}).ok
