"""`tail`: print a Kinesis stream's records as JSON lines, following it if asked
(docs/operations.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from event_processor import diagnosis, exitcodes, signals
from event_processor.config import Settings
from event_processor.tools import aws
from event_processor.tools.args import positive_float, positive_int
from event_processor.tools.aws import ToolError, list_shard_ids

# Kinesis allows 5 GetRecords per second per shard: the fastest a follow loop polls.
TAIL_BUSY_POLL_S = 0.2
# A follow loop looks for new shards (after a reshard) this often.
TAIL_SHARD_REFRESH_S = 30.0

StartAt = Literal["latest", "trim-horizon"]
_ITERATOR_TYPES: dict[str, str] = {"latest": "LATEST", "trim-horizon": "TRIM_HORIZON"}


@dataclass
class _ShardReader:
    shard_id: str
    iterator: str | None
    start: str  # ShardIteratorType used when no record was read yet
    last_sequence: str | None = None


def _record_line(data: bytes) -> str | None:
    """The record's JSON as stored, on one line; None if it is not JSON."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    text = data.decode()
    # Our records are one line; re-encode only what another producer wrote over several.
    return text if "\n" not in text and "\r" not in text else orjson.dumps(doc).decode()


class _Tail:
    def __init__(
        self,
        kinesis: Any,
        stream_name: str,
        *,
        limit: int | None,
        out: TextIO,
        err: TextIO,
    ) -> None:
        self.kinesis = kinesis
        self.stream_name = stream_name
        self.limit = limit
        self.out = out
        self.err = err
        self.printed = 0

    def open(self, shard_id: str, start: str) -> _ShardReader:
        iterator = self.kinesis.get_shard_iterator(
            StreamName=self.stream_name, ShardId=shard_id, ShardIteratorType=start
        )["ShardIterator"]
        return _ShardReader(shard_id, str(iterator), start)

    def done(self) -> bool:
        return self.limit is not None and self.printed >= self.limit

    def poll(self, reader: _ShardReader) -> tuple[bool, bool]:
        """One GetRecords on the shard; (records came or it is behind, shard still open)."""
        assert reader.iterator is not None
        try:
            page = aws.get_records(self.kinesis, reader.iterator)
        except self.kinesis.exceptions.ExpiredIteratorException:
            # Iterators live 5 minutes: reopen after the last record printed.
            if reader.last_sequence is None:
                reader.iterator = self.open(reader.shard_id, reader.start).iterator
            else:
                reader.iterator = self.kinesis.get_shard_iterator(
                    StreamName=self.stream_name,
                    ShardId=reader.shard_id,
                    ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                    StartingSequenceNumber=reader.last_sequence,
                )["ShardIterator"]
            return True, True
        records = page["Records"]
        for record in records:
            if self.done():
                break
            line = _record_line(record["Data"])
            reader.last_sequence = str(record["SequenceNumber"])
            if line is None:
                print(
                    f"warning: record {reader.shard_id}/{record['SequenceNumber']} is not JSON;"
                    " skipped",
                    file=self.err,
                )
                continue
            self.out.write(line + "\n")
            self.printed += 1
        reader.iterator = page.get("NextShardIterator")
        busy = bool(records) or int(page.get("MillisBehindLatest", 0)) > 0
        return busy, reader.iterator is not None

    def read_to_tip(self, reader: _ShardReader) -> None:
        while reader.iterator is not None and not self.done():
            busy, _ = self.poll(reader)
            if not busy:
                return


def tail(
    kinesis: Any,
    stream_name: str,
    *,
    start: StartAt = "latest",
    shards: Sequence[str] | None = None,
    follow: bool = True,
    limit: int | None = None,
    interval_s: float = 1.0,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stop: threading.Event | None = None,
    clock: aws.Clock = time.monotonic,
) -> int:
    """Print the stream's records as JSON lines; return how many were printed.

    Without `follow`: each shard (sorted by id) is read from `start` to its tip, then it returns.
    With `follow`: every shard is polled round-robin until `stop` is set or `limit` is reached;
    a shard is polled again at once while it has more, else after `interval_s`.
    """
    stop = threading.Event() if stop is None else stop
    all_shards = list_shard_ids(kinesis, stream_name)
    unknown = sorted(set(shards or ()) - set(all_shards))
    if unknown:
        raise ToolError(f"stream {stream_name} has no shard {', '.join(unknown)}")
    chosen = list(dict.fromkeys(shards)) if shards else sorted(all_shards)
    reader = _Tail(kinesis, stream_name, limit=limit, out=out, err=err)
    iterator_type = _ITERATOR_TYPES[start]
    readers = [reader.open(shard_id, iterator_type) for shard_id in chosen]

    if not follow:
        for shard_reader in readers:
            if stop.is_set() or reader.done():
                break
            reader.read_to_tip(shard_reader)
            out.flush()
        return reader.printed

    known = set(all_shards)
    next_refresh = clock() + TAIL_SHARD_REFRESH_S
    while not stop.is_set() and not reader.done():
        busy = False
        for shard_reader in list(readers):
            more, still_open = reader.poll(shard_reader)
            busy = busy or more
            if not still_open:
                readers.remove(shard_reader)  # closed by a reshard; its children take over
            if reader.done():
                break
        out.flush()
        if not shards and clock() >= next_refresh:
            next_refresh = clock() + TAIL_SHARD_REFRESH_S
            for shard_id in sorted(set(list_shard_ids(kinesis, stream_name)) - known):
                known.add(shard_id)  # a child shard after a reshard: read it from its start
                readers.append(reader.open(shard_id, "TRIM_HORIZON"))
        if shards and not readers:
            break  # every shard asked for is closed
        if stop.wait(TAIL_BUSY_POLL_S if busy else interval_s):
            break
    return reader.printed


# --------------------------------------------------------------------------------------------
# CLI


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("tail", help="print stream records as JSON lines")
    aws.add_flags(parser, "stream_name")
    parser.add_argument(
        "--from",
        dest="start",
        choices=["latest", "trim-horizon"],
        default="latest",
        help="start at new records (default) or at the oldest kept",
    )
    parser.add_argument(
        "--shard",
        dest="shards",
        action="append",
        default=None,
        metavar="SHARD_ID",
        help="read this shard (repeatable; default: every shard)",
    )
    parser.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep polling for new records until Ctrl-C/SIGTERM (default), or stop at the tip",
    )
    parser.add_argument("--limit", type=positive_int, default=None, help="stop after N records")
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        help="seconds between polls when idle (default 1)",
    )
    parser.set_defaults(handler=command)


@aws.tool_command
def command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    stream_name = settings.stream_name
    kinesis = aws.client(settings, "kinesis")
    stop = threading.Event()
    try:
        with signals.stop_on_signals(stop):
            tail(
                kinesis,
                stream_name,
                start=args.start,
                shards=args.shards,
                follow=args.follow,
                limit=args.limit,
                interval_s=args.interval,
                out=out,
                stop=stop,
            )
    except kinesis.exceptions.ResourceNotFoundException as exc:
        place = diagnosis.where_of(kinesis, settings.endpoint_url)
        print(diagnosis.diagnose(exc, diagnosis.stream_resource(settings), place), file=sys.stderr)
        return exitcodes.STARTUP_FAILED
    except (ClientError, BotoCoreError) as exc:
        print(f"tail failed: {exc}", file=sys.stderr)
        return exitcodes.FAILED
    except KeyboardInterrupt:  # a second signal during a slow call
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit flush quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return exitcodes.OK
    return exitcodes.OK
