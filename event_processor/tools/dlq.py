"""`event-processor dlq`: the flags, settings and exit codes of `dlq inspect` and `dlq redrive`.

The scans are in `inspect.py` and `redrive.py`; this module only wires them to the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from typing import TextIO, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from event_processor import exitcodes, signals
from event_processor.config import Settings
from event_processor.tools import aws, inspect, inspect_report, redrive, redrive_report
from event_processor.tools.args import non_negative_int, positive_float, positive_int
from event_processor.tools.dead_letters import KNOWN_REASONS
from event_processor.tools.recheck import contract_check
from event_processor.tools.tally import InspectReport

Scanned = TypeVar("Scanned")


def _stoppable(name: str, scan: Callable[[threading.Event], Scanned]) -> Scanned:
    """`scan`, with a stop event the first SIGINT/SIGTERM sets: the scan then ends and releases
    what it holds. Without the handler, SIGTERM would kill the tool with every message it read
    hidden until its hold runs out.

    An AWS error that escapes the scan (the start's look, a peek's receive: what was read is
    released on the way) exits 1; a second signal, which may cut the release short, exits 130.
    """
    stop = threading.Event()
    with signals.stop_on_signals(stop):
        try:
            return scan(stop)
        except (ClientError, BotoCoreError) as exc:
            print(f"{name} failed: {exc}", file=sys.stderr)
            raise aws.Exit(exitcodes.FAILED) from exc
        except KeyboardInterrupt as exc:
            print("interrupted", file=sys.stderr)
            raise aws.Exit(exitcodes.INTERRUPTED) from exc


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser("dlq", help="inspect or redrive the dead-letter queue")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    _register_inspect(dlq_commands)
    _register_redrive(dlq_commands)


# --------------------------------------------------------------------------------------------
# dlq inspect


def _register_inspect(dlq_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = dlq_commands.add_parser(
        "inspect",
        help="count DLQ messages by reason and show examples, consuming nothing",
        description="Page through the DLQ (each page hidden while the scan runs, every "
        "message made visible again at the end, nothing deleted), count the messages by reason "
        "and kind, and show examples. When --limit stops the scan, the counts are a sample; "
        "the report says so.",
    )
    aws.add_flags(parser, "dlq_url", required=("dlq_url",))
    parser.add_argument(
        "--limit",
        "--max",  # the old name, still accepted
        dest="limit",
        type=positive_int,
        default=1000,
        help="read at most N messages (default 1000)",
    )
    parser.add_argument(
        "--examples", type=non_negative_int, default=3, help="examples per reason (default 3)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=inspect_command)


@aws.tool_command
def inspect_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    dlq_url = aws.dlq_url_of(settings)
    sqs = aws.client(settings, "sqs")

    def scan(stop: threading.Event) -> InspectReport:
        aws.check_queue(sqs, dlq_url, "DLQ")
        return inspect.inspect_dlq(
            sqs, dlq_url, max_messages=args.limit, examples=args.examples, stop=stop
        )

    report = _stoppable("inspect", scan)
    if args.json:
        out.write(json.dumps(inspect_report.as_json(report), indent=2) + "\n")
    else:
        out.write(inspect_report.text(report) + "\n")
    return exitcodes.INTERRUPTED if report.interrupted else exitcodes.OK


# --------------------------------------------------------------------------------------------
# dlq redrive


def _register_redrive(dlq_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = dlq_commands.add_parser(
        "redrive",
        help="move rejected submissions from the DLQ back to the source queue",
        description="Move the rejected submissions that are in the DLQ when it starts back to "
        "the source queue, each once, deleting each from the DLQ only after it was sent. What "
        "the daemon dead-letters again meanwhile is counted as rejected again and left in the "
        "DLQ; the run ends by itself. Rejected-event letters are not submissions and are never "
        "moved. Reason `none` means messages SQS's redrive policy moved.",
    )
    aws.add_flags(parser, "dlq_url", "queue_url", "queue_name", required=("dlq_url",))
    parser.add_argument(
        "--reason",
        default=None,
        choices=KNOWN_REASONS,
        metavar="REASON",
        help=f"move only letters with this reason: {', '.join(KNOWN_REASONS)}",
    )
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=None,
        metavar="N",
        help="at most N messages per second (default: unlimited)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check what would move against the current contract (and signatures, when a key "
        "set is configured); change nothing",
    )
    parser.add_argument(
        "--max", type=positive_int, default=None, metavar="N", help="move at most N messages"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "-v", "--verbose", action="store_true", help="a line per letter (stderr with --json)"
    )
    output.add_argument(
        "-q", "--quiet", action="store_true", help="the summary only: no progress on stderr"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on stdout"
    )
    signatures = parser.add_argument_group(
        "signatures", "for --dry-run: check them as the daemon would (docs/authentication.md)"
    )
    aws.add_flags(signatures, "auth_mode", "auth_keys_secret_id", "auth_keys_file", with_aws=False)
    parser.set_defaults(handler=redrive_command)


@aws.tool_command
def redrive_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    dlq_url = aws.dlq_url_of(settings)
    sqs = aws.client(settings, "sqs")
    queue_url = aws.source_queue_url(sqs, settings)
    aws.check_queue(sqs, dlq_url, "DLQ")
    aws.check_queue(sqs, queue_url, "source queue")
    if queue_url == dlq_url:
        raise aws.UsageError("refusing to redrive: the source queue is the DLQ")
    check = contract_check(settings) if args.dry_run else None
    # With --json, stdout carries the summary alone: the rest goes to stderr.
    talk: TextIO = sys.stderr if args.json else out
    if not args.quiet:
        print(
            f"{'dry run: ' if args.dry_run else ''}redrive {dlq_url} -> {queue_url}"
            f" (reason: {args.reason or 'any'}, rate: {args.rate or 'unlimited'} msgs/s,"
            f" max: {args.max or 'all'})",
            file=talk,
        )
    summary = _stoppable(
        "redrive",
        lambda stop: redrive.redrive(
            sqs,
            dlq_url,
            queue_url,
            reason=args.reason,
            rate=args.rate,
            dry_run=args.dry_run,
            max_messages=args.max,
            check=check,
            verbose=args.verbose,
            progress=not args.quiet,
            out=talk,
            stop=stop,
        ),
    )
    if args.json:
        out.write(json.dumps(redrive_report.as_json(summary), indent=2) + "\n")
    else:
        print(redrive_report.text(summary), file=out)
    if summary.interrupted:
        return exitcodes.INTERRUPTED
    return exitcodes.FAILED if summary.failed or summary.aborted else exitcodes.OK
