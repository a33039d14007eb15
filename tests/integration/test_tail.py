"""`tail` against the emulator: the stream as JSON lines, per shard, with a limit, following."""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

import orjson
import pytest

from devworld.emulator import Emulator, World, read_stream
from event_processor.tools import aws
from event_processor.tools.tail import tail
from tests.helpers import client, eventually
from tests.integration.support import (
    put_records,
    stored_lines,
)


def test_tail_prints_the_stream_as_json_lines(emulator: Emulator, world: World) -> None:
    """--from trim-horizon --no-follow: every record, as stored, one per line, then it returns."""
    put_records(emulator, world, 20)
    out = io.StringIO()

    printed = tail(
        client(emulator, "kinesis"), world.stream_name, start="trim-horizon", follow=False, out=out
    )

    lines = out.getvalue().splitlines()
    assert printed == len(lines) == 20
    assert lines == stored_lines(emulator, world)
    assert all(isinstance(orjson.loads(line), dict) for line in lines)


def test_tail_one_shard_and_a_limit(emulator: Emulator, world: World) -> None:
    """--shard reads only that shard; --limit stops after N records."""
    put_records(emulator, world, 20)
    stored = read_stream(client(emulator, "kinesis"), world.stream_name)
    shard = stored[-1]["shard_id"]
    expected = [r["data"].decode() for r in stored if r["shard_id"] == shard]
    kinesis = client(emulator, "kinesis")

    out = io.StringIO()
    tail(kinesis, world.stream_name, start="trim-horizon", shards=[shard], follow=False, out=out)
    assert out.getvalue().splitlines() == expected

    out = io.StringIO()
    tail(kinesis, world.stream_name, start="trim-horizon", follow=False, limit=3, out=out)
    assert out.getvalue().splitlines() == stored_lines(emulator, world)[:3]

    with pytest.raises(aws.ToolError, match="no shard shardId-000000000099"):
        tail(kinesis, world.stream_name, shards=["shardId-000000000099"], follow=False)


def test_tail_skips_records_that_are_not_json(emulator: Emulator, world: World) -> None:
    """A record another producer wrote that is not JSON is skipped with a warning."""
    kinesis = client(emulator, "kinesis")
    kinesis.put_record(StreamName=world.stream_name, Data=b"plain text", PartitionKey="k")
    kinesis.put_record(StreamName=world.stream_name, Data=b'{"ok": 1}', PartitionKey="k")
    out, err = io.StringIO(), io.StringIO()
    tail(kinesis, world.stream_name, start="trim-horizon", follow=False, out=out, err=err)
    assert out.getvalue() == '{"ok": 1}\n'
    assert "is not JSON; skipped" in err.getvalue()


class Spy:
    """A Kinesis client that tells when the first GetRecords was made."""

    def __init__(self, kinesis: Any) -> None:
        self._kinesis = kinesis
        self.polled = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kinesis, name)

    def get_records(self, **kwargs: Any) -> Any:
        self.polled.set()
        return self._kinesis.get_records(**kwargs)


async def test_tail_follows_new_records_until_stopped(emulator: Emulator, world: World) -> None:
    """--from latest with follow: records put after it started are printed; stop ends it."""
    await asyncio.to_thread(put_records, emulator, world, 5, "before")
    kinesis = Spy(client(emulator, "kinesis"))
    out = io.StringIO()
    stop = threading.Event()
    task = asyncio.create_task(
        asyncio.to_thread(tail, kinesis, world.stream_name, out=out, stop=stop, interval_s=0.05)
    )

    async def printed_all() -> bool:
        return len(out.getvalue().splitlines()) >= 12

    try:
        await asyncio.wait_for(asyncio.to_thread(kinesis.polled.wait, 30), timeout=30)
        await asyncio.to_thread(put_records, emulator, world, 12, "after")
        await eventually(printed_all)
    finally:
        stop.set()
        printed = await asyncio.wait_for(task, timeout=10)
    lines = out.getvalue().splitlines()
    assert printed == len(lines) == 12
    after = [line for line in stored_lines(emulator, world) if orjson.loads(line)["tag"] == "after"]
    assert sorted(lines) == sorted(after), "exactly the new records, as stored"


async def test_tail_follow_stops_at_the_limit(emulator: Emulator, world: World) -> None:
    """With follow and --limit N it returns by itself after N records."""
    kinesis = client(emulator, "kinesis")
    await asyncio.to_thread(put_records, emulator, world, 4)
    out = io.StringIO()
    printed = await asyncio.wait_for(
        asyncio.to_thread(tail, kinesis, world.stream_name, start="trim-horizon", limit=3, out=out),
        timeout=30,
    )
    assert printed == 3
    assert len(out.getvalue().splitlines()) == 3
