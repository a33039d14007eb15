"""Command line: `event-processor run` (the daemon). Every setting is an env var and a flag.

`demo` runs the daemon on the embedded emulator; `dlq inspect`, `dlq redrive` and `tail` are
the operator tools of `dlq_tools.py` and `tail.py` (docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from pydantic import ValidationError

from event_processor import __version__, app, logs
from event_processor.config import FLAG_ONLY, Settings

# argparse's own exit code for bad usage; invalid settings use it too.
EXIT_USAGE = 2


def _env_names(name: str) -> str:
    if name in FLAG_ONLY:
        return "none: botocore reads its own AWS_ENDPOINT_URL*"
    field = Settings.model_fields[name]
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    names = [str(c) for c in choices] if choices else [name]
    return " or ".join(n.upper() for n in names)


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, derived from the model so the two cannot drift."""
    group = parser.add_argument_group("settings (flags override environment variables)")
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = getattr(default, "value", default)
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.split("_")[-1].upper(),
            help=f"{field.description} [env {_env_names(name)}; default {shown}]",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="event-processor",
        description="Validate sensor submissions from SQS and publish each event to Kinesis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    _add_settings_flags(run)
    demo = commands.add_parser(
        "demo", help="run fleet + daemon on the embedded emulator, then verify the stream"
    )
    demo.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    demo.add_argument("--devices", type=int, default=10, help="fleet size (default 10)")
    demo.add_argument(
        "--round-interval", type=float, default=1.0, help="seconds between fleet rounds (default 1)"
    )
    demo.add_argument(
        "--invalid-probability",
        type=float,
        default=0.01,
        help="share of broken fields (default 0.01)",
    )
    demo.add_argument(
        "--metrics-port", type=int, default=9100, help="serve /metrics here; 0 disables"
    )
    demo.add_argument(
        "--endpoint-url",
        default=None,
        help="use this AWS endpoint (e.g. LocalStack at http://localhost:4566) "
        "instead of the embedded emulator",
    )
    _add_ops_commands(commands)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _add_aws_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint-url", default=None, help="AWS endpoint (else botocore reads AWS_ENDPOINT_URL)"
    )
    parser.add_argument(
        "--aws-region",
        default=None,
        help="region [env AWS_REGION or AWS_DEFAULT_REGION; default eu-west-1]",
    )


def _add_ops_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`dlq inspect`, `dlq redrive` (event_processor/dlq_tools.py) and `tail` (tail.py)."""
    dlq = commands.add_parser("dlq", help="inspect or redrive the dead-letter queue")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_url_help = "dead-letter queue URL [env DLQ_URL]"

    inspect = dlq_commands.add_parser(
        "inspect",
        help="count DLQ messages by reason and show examples, consuming nothing",
        description="Read DLQ messages with VisibilityTimeout=0 (nothing hidden, nothing "
        "deleted), count them by reason and kind, and show examples. Beyond what SQS hands "
        "out, the counts are a sample; the report says so.",
    )
    _add_aws_flags(inspect)
    inspect.add_argument("--dlq-url", default=None, help=dlq_url_help)
    inspect.add_argument(
        "--max", type=_positive_int, default=1000, help="read at most N messages (default 1000)"
    )
    inspect.add_argument(
        "--examples", type=_non_negative_int, default=3, help="examples per reason (default 3)"
    )
    inspect.add_argument("--json", action="store_true", help="print one JSON document")

    redrive = dlq_commands.add_parser(
        "redrive",
        help="move rejected submissions from the DLQ back to the source queue",
        description="Move rejected submissions back to the source queue, deleting each from "
        "the DLQ only after it was sent. Rejected-event letters are not submissions and are "
        "never moved. Reason `none` means messages SQS's redrive policy moved.",
    )
    _add_aws_flags(redrive)
    redrive.add_argument("--dlq-url", default=None, help=dlq_url_help)
    redrive.add_argument(
        "--queue-url", default=None, help="source queue URL (wins over the name) [env QUEUE_URL]"
    )
    redrive.add_argument(
        "--queue-name", default=None, help="source queue name [env QUEUE_NAME; default submissions]"
    )
    redrive.add_argument("--reason", default=None, help="move only messages with this reason")
    redrive.add_argument(
        "--rate", type=_positive_float, default=None, help="at most N messages per second"
    )
    redrive.add_argument(
        "--dry-run", action="store_true", help="print what would move; change nothing"
    )
    redrive.add_argument("--max", type=_positive_int, default=None, help="move at most N messages")

    tail = commands.add_parser("tail", help="print stream records as JSON lines")
    _add_aws_flags(tail)
    tail.add_argument(
        "--stream-name", default=None, help="stream [env STREAM_NAME; default events]"
    )
    tail.add_argument(
        "--from",
        dest="start",
        choices=["latest", "trim-horizon"],
        default="latest",
        help="start at new records (default) or at the oldest kept",
    )
    tail.add_argument(
        "--shard",
        dest="shards",
        action="append",
        default=None,
        metavar="SHARD_ID",
        help="read this shard (repeatable; default: every shard)",
    )
    tail.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep polling for new records until Ctrl-C/SIGTERM (default), or stop at the tip",
    )
    tail.add_argument("--limit", type=_positive_int, default=None, help="stop after N records")
    tail.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        help="seconds between polls when idle (default 1)",
    )


def _run_ops(command: str, args: dict[str, Any]) -> int:
    # Imported here: boto3 and the tools are not needed by `run`.
    from event_processor.ops import AwsOptions  # noqa: PLC0415

    aws = AwsOptions(endpoint_url=args["endpoint_url"], region=args["aws_region"])
    if command == "tail":
        from event_processor import tail  # noqa: PLC0415

        return tail.tail_command(
            tail.TailOptions(
                aws=aws,
                stream_name=args["stream_name"],
                start=args["start"],
                shards=args["shards"],
                follow=args["follow"],
                limit=args["limit"],
                interval_s=args["interval"],
            )
        )
    from event_processor import dlq_tools  # noqa: PLC0415

    if args["dlq_command"] == "inspect":
        return dlq_tools.inspect_command(
            dlq_tools.InspectOptions(
                aws=aws,
                dlq_url=args["dlq_url"],
                max_messages=args["max"],
                examples=args["examples"],
                as_json=args["json"],
            )
        )
    return dlq_tools.redrive_command(
        dlq_tools.RedriveOptions(
            aws=aws,
            dlq_url=args["dlq_url"],
            queue_url=args["queue_url"],
            queue_name=args["queue_name"],
            reason=args["reason"],
            rate=args["rate"],
            dry_run=args["dry_run"],
            max_messages=args["max"],
        )
    )


def load_settings(overrides: dict[str, str]) -> Settings:
    """Environment first, then flags; raises ValidationError with every bad setting."""
    return Settings(**overrides)  # type: ignore[arg-type]  # pydantic parses the strings


def _explain(error: ValidationError) -> str:
    lines = ["invalid settings:"]
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "settings"
        lines.append(f"  {where.upper()} ({where.replace('_', '-')}): {problem['msg']}")
    return "\n".join(lines)


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """uvloop where it is installed: its C event loop and transports cut the loop's share."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command == "demo":
        # Imported here: the demo brings boto3 and rich, which `run` never needs.
        from event_processor import demo  # noqa: PLC0415

        logs.configure("WARNING", "text")
        options = demo.DemoOptions(
            duration_s=args["duration"],
            devices=args["devices"],
            round_interval_s=args["round_interval"],
            invalid_probability=args["invalid_probability"],
            metrics_port=args["metrics_port"],
            endpoint_url=args["endpoint_url"],
        )
        return asyncio.run(demo.run_demo(options))
    if command in {"dlq", "tail"}:
        return _run_ops(command, args)
    try:
        settings = load_settings(args)
    except ValidationError as exc:
        print(_explain(exc), file=sys.stderr)
        return EXIT_USAGE
    logs.configure(settings.log_level.value, settings.log_format.value)
    if command == "run":
        return run_loop(app.run(settings))
    return EXIT_USAGE  # argparse rejects unknown commands before this
