"""`python -m devworld.bench.inprocess`: the daemon's parts drain a backlog against stand-ins."""

from __future__ import annotations

from pathlib import Path

from devworld.bench.inprocess import drain
from devworld.bench.workloads import BenchKeys, backlog, fleet_backlog
from event_processor.config import AuthMode
from event_processor.contract.parse import ParsedSubmission, parse_submission
from event_processor.contract.records import PartitionKey


def _valid_events(bodies: list[str]) -> int:
    total = 0
    for body in bodies:
        parsed = parse_submission(body, "t", PartitionKey.DEVICE_ID)
        if isinstance(parsed, ParsedSubmission):
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
    assert result.seconds > 0


async def test_enforce_verifies_every_signature_and_publishes_what_off_does(
    tmp_path: Path,
) -> None:
    """Signed by the bench's key set, enforce publishes what off publishes and counts every
    submission's signature as verified: the comparison's two drains do the same work."""
    submissions = fleet_backlog(40, seed=7)
    bodies = [body for _, body in submissions]
    keys = BenchKeys.new()
    attributes = keys.sign(submissions)
    off = await drain(bodies, latency_s=0.001, profile=False, attributes=attributes)
    enforce = await drain(
        bodies,
        latency_s=0.001,
        profile=False,
        attributes=attributes,
        auth_mode=AuthMode.ENFORCE,
        key_file=keys.write(tmp_path),
    )
    assert enforce.records == off.records == _valid_events(bodies)
    assert enforce.verified == len(bodies)
    assert off.verified is None


async def test_enforce_really_checks(tmp_path: Path) -> None:
    """Signed with another key set than the one read, nothing is published: enforce's drain
    measures a check that rejects, not one that passes everything."""
    submissions = fleet_backlog(20, seed=7)
    enforce = await drain(
        [body for _, body in submissions],
        latency_s=0.001,
        profile=False,
        attributes=BenchKeys.new().sign(submissions),
        auth_mode=AuthMode.ENFORCE,
        key_file=BenchKeys.new().write(tmp_path),
    )
    assert enforce.records == 0
    assert enforce.verified == 0
