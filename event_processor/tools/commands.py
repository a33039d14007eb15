"""The operator tools' sub-commands (`dlq inspect`, `dlq redrive`, `tail`): their parsers only.

`cli` builds every parser on every start, `run` included, so this module imports nothing a
tool needs to work: a tool's own module (and boto3) is imported when its command runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from event_processor.tools.args import add_flags, non_negative_int, positive_float, positive_int

Handler = Callable[[argparse.Namespace], int]


def _command(module: str) -> Handler:
    """The `command` of event_processor.tools.<module>, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        tool = importlib.import_module(f"event_processor.tools.{module}")
        return int(tool.command(args))

    return run


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `dlq inspect`, `dlq redrive` and `tail` to the top-level sub-commands."""
    dlq = commands.add_parser("dlq", help="inspect or redrive the dead-letter queue")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    _inspect(dlq_commands)
    _redrive(dlq_commands)
    _tail(commands)


def _inspect(dlq_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = dlq_commands.add_parser(
        "inspect",
        help="count DLQ messages by reason and show examples, consuming nothing",
        description="Read DLQ messages with VisibilityTimeout=0 (nothing hidden, nothing "
        "deleted), count them by reason and kind, and show examples. Beyond what SQS hands "
        "out, the counts are a sample; the report says so.",
    )
    add_flags(parser, "dlq_url")
    parser.add_argument(
        "--max", type=positive_int, default=1000, help="read at most N messages (default 1000)"
    )
    parser.add_argument(
        "--examples", type=non_negative_int, default=3, help="examples per reason (default 3)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=_command("inspect"))


def _redrive(dlq_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = dlq_commands.add_parser(
        "redrive",
        help="move rejected submissions from the DLQ back to the source queue",
        description="Move rejected submissions back to the source queue, deleting each from "
        "the DLQ only after it was sent. Rejected-event letters are not submissions and are "
        "never moved. Reason `none` means messages SQS's redrive policy moved.",
    )
    add_flags(parser, "dlq_url", "queue_url", "queue_name")
    parser.add_argument("--reason", default=None, help="move only messages with this reason")
    parser.add_argument(
        "--rate", type=positive_float, default=None, help="at most N messages per second"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would move; change nothing"
    )
    parser.add_argument("--max", type=positive_int, default=None, help="move at most N messages")
    parser.set_defaults(handler=_command("redrive"))


def _tail(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("tail", help="print stream records as JSON lines")
    add_flags(parser, "stream_name")
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
    parser.set_defaults(handler=_command("tail"))
