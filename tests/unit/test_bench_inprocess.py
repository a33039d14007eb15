"""`python -m devworld.bench.inprocess`: the daemon's parts drain a backlog against stand-ins."""

from __future__ import annotations

from devworld.bench.inprocess import drain
from devworld.bench.workloads import backlog
from event_processor.models import Packed, PartitionKey, parse_packed


def _valid_events(bodies: list[str]) -> int:
    total = 0
    for body in bodies:
        parsed = parse_packed(body, "t", PartitionKey.DEVICE_ID, lambda *_: None)
        if isinstance(parsed, Packed):
            total += len(parsed.records)
    return total


async def test_a_drain_publishes_every_valid_event_and_counts_calls() -> None:
    """Every valid event of the backlog reaches the stand-in stream before the drain ends,
    and the counted drain reports Python function calls: the figures have something to
    divide."""
    bodies = backlog(40, seed=7)
    result = await drain(bodies, latency_s=0.001, profile=True)
    assert result.records == _valid_events(bodies) > 0
    # At least a receive and a delete per 10 messages, and one PutRecords.
    assert result.calls >= 2 * len(bodies) // 10 + 1
    assert result.function_calls is not None
    assert result.function_calls > result.records
    assert result.cpu_s > 0
