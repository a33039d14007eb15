"""Command line: `event-processor run` (the daemon) and `check` (its start-up checks alone).
Every setting is an env var and a flag.

`demo` runs the daemon on the embedded emulator (the `devworld` package, `demo` extra);
`dlq inspect`, `dlq redrive`, `tail` and `keys` are the operator tools of `event_processor.tools`,
each registering its own sub-command (docs/operations.md). Only `run` and `check` import the daemon
(`app`, and through it aiobotocore and aiohttp); a tool imports boto3 when it runs.
"""

from __future__ import annotations

import gc

# The collector is off while this module's imports run (pydantic, the contract's validators,
# botocore through the tools allocate far more than they free), and on again
# below as it was; `run` then keeps it off for the rest of start-up (see main).
_collecting = gc.isenabled()
gc.disable()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import sys  # noqa: E402
from collections.abc import Coroutine, Sequence  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from pydantic import ValidationError  # noqa: E402

from event_processor import __version__, constants, exitcodes, logs  # noqa: E402
from event_processor.config import (  # noqa: E402
    GROUP_TITLES,
    Group,
    Settings,
    explain,
    flag_help,
    flag_metavar,
    group_of,
)
from event_processor.tools import dlq, keys, schema, tail  # noqa: E402

if _collecting:
    gc.enable()

if TYPE_CHECKING:
    from event_processor.pipeline.worker import Worker


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, derived from the model so the two cannot drift: in its
    Field's section, with its placeholder, range or choices, variables and default."""
    groups = {group: parser.add_argument_group(GROUP_TITLES[group]) for group in Group}
    # A field that names no section still gets its flag (the help tests catch it).
    other = parser.add_argument_group("other settings")
    for name in Settings.model_fields:
        group = group_of(name)
        # No argparse `choices`: a bad value is a setting error (exit 2, named as the setting).
        (other if group is None else groups[group]).add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            metavar=flag_metavar(name),
            help=flag_help(name),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="event-processor",
        description="Validate sensor submissions from SQS and publish each event to Kinesis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run the daemon until SIGTERM/SIGINT",
        description="Run the daemon until SIGTERM or SIGINT (a second one skips the drain). "
        "Every setting is an environment variable and a flag; flags win.",
    )
    _add_settings_flags(run)
    check = commands.add_parser(
        "check",
        help="check what `run` needs (settings, queues, stream, key set, metrics port) without "
        "receiving; exits 0, or with the code `run` would exit with",
        description="Make every start-up check of `run` with the same settings and report each "
        'one: for a pre-deploy step or an init container (docs/operations.md, "check"). '
        "Nothing is received or deleted.",
    )
    check.add_argument("--json", action="store_true", help="print the report as one JSON document")
    _add_settings_flags(check)
    check.set_defaults(handler=_check)
    demo = commands.add_parser(
        "demo",
        help="run fleet + daemon on the embedded emulator, then verify the stream",
        description="Start the embedded AWS emulator (or use --endpoint-url), run a sped-up "
        "signing sensor fleet, a rogue device and the daemon (AUTH_MODE=enforce) together, then "
        "read the stream back and verify it. Exit 0 only if nothing valid was lost and every "
        "forgery was rejected. Ctrl-C ends it early. Needs the demo extra.",
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long the fleet sends before the check (default %(default)g)",
    )
    demo.add_argument(
        "--devices", type=int, default=10, metavar="N", help="fleet size (default %(default)s)"
    )
    demo.add_argument(
        "--round-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between fleet rounds, each device sending one submission a round "
        "(default %(default)g)",
    )
    demo.add_argument(
        "--invalid-probability",
        type=float,
        default=0.01,
        metavar="P",
        help="share of fields the fleet breaks, 0-1, which the daemon rejects to the DLQ "
        "(default %(default)g)",
    )
    demo.add_argument(
        "--metrics-port",
        type=int,
        default=9100,
        metavar="PORT",
        help="serve the daemon's /metrics here (any free port if taken); 0 disables "
        "(default %(default)s)",
    )
    demo.add_argument(
        "--endpoint-url",
        default=None,
        metavar="URL",
        help="use this AWS endpoint (e.g. LocalStack at http://localhost:4566) "
        "instead of the embedded emulator (default: the embedded emulator)",
    )
    demo.add_argument(
        "--fifo",
        action="store_true",
        help="a FIFO queue and DLQ (submissions.fifo, submissions-dlq.fifo), each device its "
        "own message group; the check also wants each device's submissions in the stream in "
        "the order sent",
    )
    demo.set_defaults(handler=_demo)
    # The operator tools register their own sub-commands (a boto3 client only when one runs).
    dlq.register(commands)
    tail.register(commands)
    keys.register(commands)
    schema.register(commands)
    return parser


def load_settings(overrides: dict[str, str]) -> Settings:
    """Environment first, then flags; raises ValidationError with every bad setting."""
    return Settings(**overrides)  # type: ignore[arg-type]  # pydantic parses the strings


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """uvloop where it is installed: its C event loop and transports cut the loop's share."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _settings(args: argparse.Namespace) -> Settings | None:
    """`run`'s and `check`'s settings from the environment and flags, logging configured by
    them; None (each bad setting said on stderr) when they are invalid."""
    given = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    try:
        settings = load_settings(given)
    except ValidationError as exc:
        print(explain(exc), file=sys.stderr)
        return None
    logs.configure(settings.log_level.value, settings.log_format.value)
    return settings


def _check(args: argparse.Namespace) -> int:
    if (settings := _settings(args)) is None:
        return exitcodes.USAGE
    # Imported here, as for `run`: the daemon's clients and checks.
    from event_processor import app  # noqa: PLC0415

    return run_loop(app.check(settings, sys.stdout, as_json=args.json))


def _demo(args: argparse.Namespace) -> int:
    try:
        # Imported here: the demo needs moto and rich (the `demo` extra), which `run` never needs.
        from devworld import demo  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        print(
            f"event-processor demo needs the demo extra ({exc.name} is missing):"
            " pip install 'event-processor[demo]'",
            file=sys.stderr,
        )
        return exitcodes.USAGE
    logs.configure("WARNING", "text")
    options = demo.DemoOptions(
        duration_s=args.duration,
        devices=args.devices,
        round_interval_s=args.round_interval,
        invalid_probability=args.invalid_probability,
        metrics_port=args.metrics_port,
        endpoint_url=args.endpoint_url,
        fifo=args.fifo,
    )
    return asyncio.run(demo.run_demo(options))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is not None:
        return int(handler(args))
    if (settings := _settings(args)) is None:
        return exitcodes.USAGE
    # Start-up builds ~100,000 objects that live as long as the process (modules, botocore's
    # service models, clients): the cyclic collector would scan them again and again, twice
    # in full while importing alone. It waits until start-up is done, and what start-up built
    # is then frozen out of its scans (docs/performance.md, "Choices that hold the cost down").
    gc.disable()
    try:
        # Imported here: only `run` needs the daemon (aiobotocore, aiohttp, prometheus-client).
        from event_processor import app  # noqa: PLC0415

        return run_loop(app.run(settings, app.Hooks(on_started=_started)))
    finally:
        gc.enable()


def _started(_worker: Worker, _metrics_port: int) -> None:
    """Once receiving: what start-up built is kept out of the collector's scans for good, and
    the young generation is collected less often (constants.GC_GEN0_THRESHOLD)."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(constants.GC_GEN0_THRESHOLD, older, oldest)
    gc.enable()
