"""The fault proxy's own promise: its random faults follow a schedule its seed fixes."""

from __future__ import annotations

import contextlib
from typing import Any

from botocore.exceptions import ClientError

from devworld import faultproxy
from devworld.emulator import Emulator, World
from devworld.faultproxy import FaultProxy
from tests.helpers import LeanClients, lean_clients

_CALLS = 30
_SEED = 7


async def _throttled_calls(world: World, proxy: FaultProxy, sqs_calls_between: int) -> list[int]:
    """Which of `_CALLS` PutRecords calls were throttled, with failed entries and
    `sqs_calls_between` times 0, 1 or 2 SQS calls drawing from the proxy in between."""
    proxy.configure(throttle_rate=0.1, sqs_error_rate=0.1, put_records_entry_failure_rate=0.5)
    throttled: list[int] = []
    c: LeanClients
    async with lean_clients(world, proxy.endpoint_url) as c:
        for call in range(_CALLS):
            for _ in range(sqs_calls_between * (call % 3)):
                # An injected 500 after its retries is fine: it drew, which is the point.
                with contextlib.suppress(ClientError):
                    await c.lean_sqs.receive_message(QueueUrl=world.queue_url, WaitTimeSeconds=0)
            records: list[Any] = [{"Data": b"x", "PartitionKey": str(i)} for i in range(call + 1)]
            try:
                await c.lean_kinesis.put_records(StreamName=world.stream_name, Records=records)
            except ClientError:
                throttled.append(call)
    assert proxy.injected(faultproxy.THROTTLE) == len(throttled)
    return throttled


async def test_the_nth_kinesis_call_meets_the_same_fate_whatever_the_sqs_calls_between(
    emulator: Emulator, world: World
) -> None:
    """A shared stream let interleaving decide: one CI run saw no throttle in 30 calls at 10%."""
    with FaultProxy(emulator.endpoint_url, seed=_SEED) as proxy:
        alone = await _throttled_calls(world, proxy, sqs_calls_between=0)
    with FaultProxy(emulator.endpoint_url, seed=_SEED) as twin:
        interleaved = await _throttled_calls(world, twin, sqs_calls_between=1)
        assert twin.injected(faultproxy.SQS_ERROR) > 0
        assert twin.injected(faultproxy.ENTRY_FAILURE) > 0
    assert alone == interleaved
    assert alone, "the seed's schedule throttles some of the first 30 calls"
