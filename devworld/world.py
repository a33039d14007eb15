"""`make world` (`python -m devworld.world`): the embedded emulator with the daemon's world in
it (queue, DLQ, stream, the sensors' key set), kept up until Ctrl-C, for the daemon, the fleet
and the operator tools run by hand from other shells.

Only the `export` lines go to stdout (shell text: `... > world.env &`, then `. world.env`
works from a script); what to try next, and the rest, goes to stderr.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from devworld.emulator import (
    DUMMY_ACCESS_KEY_ID,
    DUMMY_SECRET_ACCESS_KEY,
    KEY_SET_SECRET_NAME,
    Emulator,
    World,
    create_key_set_secret,
)
from event_processor import exitcodes, signals
from event_processor.config import AuthMode

# A fixed port, so the exports pasted into other shells stay right across restarts. Not
# 4566 (LocalStack's, which may run too) nor moto's own 5000 (macOS's AirPlay receiver and
# Flask's default); next to LocalStack's, above its 4510-4559 range for its own services.
DEFAULT_PORT = 4599
# Loopback only: the emulator accepts any credentials.
HOST = "127.0.0.1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devworld.world",
        description="Start the embedded AWS emulator (moto) with the daemon's world in it: the "
        "source queue, its DLQ (redrive after 5 receives), a 2-shard stream and the sensors' "
        "key set secret. Print the exports another shell needs (on stdout; the rest on "
        "stderr) and keep it up until Ctrl-C or SIGTERM. Its state lives in this process only. "
        "docs/local-world.md.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        metavar="PORT",
        help="loopback port to listen on; 0: any free one (default %(default)s)",
    )
    parser.add_argument(
        "--region",
        default="eu-west-1",
        metavar="REGION",
        help="the world's AWS region (default %(default)s)",
    )
    parser.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create the sensors' key set secret and export AUTH_MODE=enforce with it; "
        "--no-auth: no key set, signatures off (default: --auth)",
    )
    parser.add_argument(
        "--fifo",
        action="store_true",
        help="a FIFO queue and DLQ (submissions.fifo, submissions-dlq.fifo) instead; the fleet "
        "then sends each device's submissions in its own message group (default: standard)",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the exports to PATH once the world is up, for `. PATH` in another "
        "shell; removed when the world stops (default: stdout only)",
    )
    return parser


_STANDARD_NOTE = (
    "# QUEUE_URL and STREAM_NAME name what the defaults find too; the dlq tools need DLQ_URL"
)
_FIFO_NOTE = (
    "# FIFO queue and DLQ (--fifo): QUEUE_URL is needed (QUEUE_NAME's default names the\n"
    "# standard queue); sensor-fleet sends each device's submissions in its own message group"
)


def exports(emulator: Emulator, world: World, key_set_secret: str | None) -> str:
    """The shell lines that point the daemon, the tools and sensor-fleet at `world`."""
    lines = [
        f"# event-processor's world on the embedded emulator at {world.endpoint_url}, "
        "up until Ctrl-C there.",
        f"export AWS_ENDPOINT_URL={shlex.quote(world.endpoint_url)}",
        "# dummies: the emulator takes any credentials; AWS_DEFAULT_REGION is for the AWS CLI",
        f"export AWS_ACCESS_KEY_ID={shlex.quote(DUMMY_ACCESS_KEY_ID)}",
        f"export AWS_SECRET_ACCESS_KEY={shlex.quote(DUMMY_SECRET_ACCESS_KEY)}",
        f"export AWS_REGION={shlex.quote(emulator.region)}",
        f"export AWS_DEFAULT_REGION={shlex.quote(emulator.region)}",
        _FIFO_NOTE if world.fifo else _STANDARD_NOTE,
        f"export QUEUE_URL={shlex.quote(world.queue_url)}",
        f"export DLQ_URL={shlex.quote(world.dlq_url)}",
        f"export STREAM_NAME={shlex.quote(world.stream_name)}",
    ]
    if key_set_secret is None:
        lines.append("# no key set (--no-auth): signatures are off")
    else:
        lines += [
            "# optional, together: the daemon enforces signatures, the fleet signs",
            f"export AUTH_MODE={AuthMode.ENFORCE.value}",
            f"export AUTH_KEYS_SECRET_ID={shlex.quote(key_set_secret)}",
        ]
    return "\n".join(lines) + "\n"


def _command(name: str) -> str:
    """How to call one of our console scripts: this venv's, relative if it is below the current
    directory (`.venv/bin/event-processor`), else its absolute path; by name if it has none."""
    script = Path(sys.executable).parent / name
    if not script.exists():
        return name
    here = Path.cwd()
    return str(script.relative_to(here)) if script.is_relative_to(here) else str(script)


def next_steps(env_file: Path | None, signed: bool) -> str:
    """What to try with the world, for stderr."""
    daemon, fleet = _command("event-processor"), _command("sensor-fleet")
    # Absolute: the other shell may be elsewhere, and `. name` alone searches PATH.
    source = f"`. {env_file.absolute()}`" if env_file is not None else "paste the exports above"
    unsigned = "env -u AUTH_MODE -u AUTH_KEYS_SECRET_ID " if signed else ""
    steps = [
        f"The world is up. In a second shell, {source}, then run the daemon:",
        f"  {daemon} run",
        "In a third shell, with the same exports:",
        f"  {fleet} load --count 200 --invalid-probability 0.05"
        f"   # {'signed, ' if signed else ''}some fields broken",
    ]
    if signed:
        steps.append(f"  {unsigned}{fleet} load --count 10   # unsigned: rejected whole")
    steps += [
        f"  {daemon} dlq inspect                       # the DLQ by reason, with examples",
        f"  {daemon} dlq redrive --dry-run             # what a redrive would move",
        f"  {daemon} tail --from trim-horizon --no-follow --limit 5   # records as JSON lines",
        "Ctrl-C here stops the world; its queues, stream and key set go with it.",
    ]
    return "\n".join(steps)


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all: a shell sourcing it never sees half."""
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8"
    ) as tmp:
        tmp.write(text)
    Path(tmp.name).replace(path)


def serve(args: argparse.Namespace, stop: threading.Event, out: TextIO, err: TextIO) -> int:
    """Start the world, print its exports, wait for `stop`, stop the world."""
    emulator = Emulator(region=args.region, host=HOST, port=args.port)
    try:
        emulator.start()
    except OSError as exc:
        print(
            f"world: cannot listen on {HOST}:{args.port} ({exc.strerror or exc}): another "
            "world or a LocalStack may hold it; pass --port N, or --port 0 for any free port",
            file=err,
        )
        return exitcodes.STARTUP_FAILED
    env_file: Path | None = args.env_file
    try:
        world = emulator.create_world(fifo=args.fifo)
        secret: str | None = None
        if args.auth:
            create_key_set_secret(emulator.boto3_client("secretsmanager"))
            secret = KEY_SET_SECRET_NAME
        text = exports(emulator, world, secret)
        # The file first: whoever sees the exports on stdout may look for it at once.
        if env_file is not None:
            _write_atomically(env_file, text)
        # One write, then flush: a reader of the pipe gets the exports whole.
        out.write(text)
        out.flush()
        print(next_steps(env_file, signed=secret is not None), file=err, flush=True)
        stop.wait()
        print("world: stopping", file=err, flush=True)
        return exitcodes.OK
    finally:
        if env_file is not None:
            env_file.unlink(missing_ok=True)  # its URLs point at nothing once stopped
        emulator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = threading.Event()
    # Installed before the emulator starts: a Ctrl-C during start-up ends it too.
    with signals.stop_on_signals(stop):
        try:
            return serve(args, stop, sys.stdout, sys.stderr)
        except KeyboardInterrupt:  # a second signal: cut the stop short
            return exitcodes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
