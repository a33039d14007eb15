"""`sensor-fleet [simulate|load|host]`: emulated EDR agents sending submissions to SQS."""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from event_processor import config, exitcodes, signals
from event_processor.config import Settings
from event_processor.tools import aws
from event_processor.tools.keys import read_key_set
from sensor_fleet.generator import device_ids, encode, fleet_submissions, make_submission
from sensor_fleet.host import HostAgent, default_state_file, device_id
from sensor_fleet.sender import MessageAttributes, Sender, sqs_client
from sensor_fleet.signer import DeviceSigner, FleetSigner

log = logging.getLogger("sensor_fleet")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sensor-fleet",
        description="Emulated EDR agents sending submissions to the daemon's SQS queue, one "
        "message each; with a key set configured, every submission is signed. The mode "
        "(simulate, load or host) comes after the common options; `sensor-fleet MODE --help` "
        "describes each.",
    )
    # The daemon's own settings (env and flags), so both resolve the same queue and region,
    # and read the same key set: with one, every submission is signed.
    aws.add_flags(parser, "queue_url", "queue_name", "auth_keys_secret_id", "auth_keys_file")
    parser.add_argument(
        "--key-id",
        default=None,
        metavar="ID",
        help="the key set's master key to derive the devices' keys from (needed if it holds "
        "several; default: its only one)",
    )
    parser.add_argument(
        "--localstack",
        action="store_true",
        help="use localstack-client (also implied by LOCALSTACK_HOST)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="random seed, for repeatable runs (default: a new one each run)",
    )
    modes = parser.add_subparsers(dest="mode", metavar="{simulate,load,host}")

    simulate = modes.add_parser(
        "simulate",
        help="the fleet: each device sends one submission a round (default)",
        description="Each of the fleet's devices (fixed ids) sends one submission every "
        "round, rounds a random --round-min to --round-max seconds apart, until Ctrl-C.",
    )
    _fleet_flags(simulate, fleet_size="10")
    simulate.add_argument(
        "--round-min",
        type=float,
        default=float(_env("ROUND_MIN_SECONDS", "30")),
        metavar="SECONDS",
        help="least time between rounds [env ROUND_MIN_SECONDS; default %(default)g]",
    )
    simulate.add_argument(
        "--round-max",
        type=float,
        default=float(_env("ROUND_MAX_SECONDS", "45")),
        metavar="SECONDS",
        help="most time between rounds [env ROUND_MAX_SECONDS; default %(default)g]",
    )
    simulate.add_argument(
        "--rounds",
        type=int,
        default=0,
        metavar="N",
        help="stop after N rounds (default 0: never)",
    )

    load = modes.add_parser(
        "load",
        help="send fast, for benchmarks",
        description="Send submissions from the fleet's devices as fast as asked, then print "
        "what was sent: --count N at once, or --rate R per second for --duration seconds.",
    )
    what = load.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--count", type=int, metavar="N", help="send N submissions as fast as possible"
    )
    what.add_argument(
        "--rate",
        type=float,
        metavar="PER_SECOND",
        help="send this many submissions a second, for --duration",
    )
    load.add_argument(
        "--duration",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long --rate sends (default %(default)g)",
    )
    _fleet_flags(load, fleet_size="100")

    host = modes.add_parser(
        "host",
        help="a real agent for this machine",
        description="Every --interval, report this machine's new processes and established "
        "TCP connections as one submission (Linux, macOS, Windows); the device id is derived "
        "from the machine's own id (machine-id, IOPlatformUUID, MachineGuid), or generated "
        "once and kept in --state-file.",
    )
    host.add_argument(
        "--interval",
        type=float,
        default=float(_env("HOST_INTERVAL_SECONDS", "10")),
        metavar="SECONDS",
        help="time between scans [env HOST_INTERVAL_SECONDS; default %(default)g]",
    )
    host.add_argument(
        "--rounds", type=int, default=0, metavar="N", help="stop after N scans (default 0: never)"
    )
    host.add_argument(
        "--state-file",
        type=Path,
        default=Path(_env("HOST_STATE_FILE", str(default_state_file()))),
        metavar="PATH",
        help="where the agent keeps a generated device id, on a machine without an id of its "
        "own [env HOST_STATE_FILE; default %(default)s]",
    )
    host.add_argument(
        "--enrolment",
        type=Path,
        default=None,
        metavar="PATH",
        help="sign as the device of this enrolment (what `event-processor keys derive` "
        "prints); instead of a key set",
    )
    return parser


def _fleet_flags(parser: argparse.ArgumentParser, *, fleet_size: str) -> None:
    """The simulated fleet's size and its share of broken fields (simulate and load)."""
    parser.add_argument(
        "--fleet-size",
        type=int,
        default=int(_env("FLEET_SIZE", fleet_size)),
        metavar="N",
        help="devices in the fleet, each with a fixed id [env FLEET_SIZE; default %(default)s]",
    )
    parser.add_argument(
        "--invalid-probability",
        type=float,
        default=float(_env("INVALID_PROBABILITY", "0.01")),
        metavar="P",
        help="share of fields sent broken, 0-1 (bad ids, addresses, command lines), which "
        "the daemon rejects to the DLQ [env INVALID_PROBABILITY; default %(default)g]",
    )


def fleet_signer(args: argparse.Namespace, settings: Settings) -> FleetSigner | None:
    """The simulated devices' signer when a key set is configured, as for the daemon."""
    if not settings.has_key_source:
        if args.key_id is not None:
            raise aws.UsageError(
                "--key-id needs a key set: pass --auth-keys-secret-id or --auth-keys-file"
            )
        return None
    return FleetSigner(read_key_set(settings), args.key_id)


def agent_device_id(state_file: Path) -> str:
    """This machine's device id; a generated one that cannot be kept stops the agent, since a
    new id each start would make it a new device each time."""
    try:
        return device_id(state_file)
    except OSError as exc:
        raise aws.ToolError(
            f"no machine id, and the device id cannot be kept in {state_file}: {exc.strerror}"
        ) from None


def host_signer(args: argparse.Namespace, settings: Settings) -> DeviceSigner | None:
    """The host agent's signer: its enrolment, or its key derived from the key set."""
    path: Path | None = args.enrolment
    if path is None:
        fleet = fleet_signer(args, settings)
        return None if fleet is None else fleet.device(agent_device_id(args.state_file))
    if settings.has_key_source or args.key_id is not None:
        raise aws.UsageError(
            "--enrolment holds the device's key: pass it without a key set or --key-id"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise aws.UsageError(f"enrolment {path} is unreadable: {exc.strerror}") from None
    except UnicodeDecodeError:
        # Not the decoder's message: it quotes the bytes it choked on.
        raise aws.UsageError(f"enrolment {path} is not UTF-8 text") from None
    try:
        return DeviceSigner.from_enrolment(text)
    except ValueError as exc:
        raise aws.UsageError(f"enrolment {path}: {exc}") from None


def run_simulate(
    args: argparse.Namespace, sender: Sender, stop: threading.Event, signer: FleetSigner | None
) -> int:
    rng = random.Random(args.seed)
    devices = device_ids(args.fleet_size, seed=args.seed or 0)
    rounds = 0
    while not stop.is_set():
        bodies = [encode(make_submission(rng, d, args.invalid_probability)) for d in devices]
        # Signed as the device that sends it, whatever its (maybe broken) device_id says.
        attributes = [
            None if signer is None else signer.attributes(d, body)
            for d, body in zip(devices, bodies, strict=True)
        ]
        # On a FIFO queue each device is its own message group (Sender).
        accepted = len(sender.send(bodies, attributes, devices))
        rounds += 1
        log.info("round sent", extra={"action": "round", "round": rounds, "accepted": accepted})
        if args.rounds and rounds >= args.rounds:
            break
        stop.wait(rng.uniform(args.round_min, args.round_max))
    print(f"sent {sender.sent} submissions in {rounds} rounds, dropped {sender.dropped}")
    return exitcodes.OK


def run_load(
    args: argparse.Namespace, sender: Sender, stop: threading.Event, signer: FleetSigner | None
) -> int:
    submissions = fleet_submissions(args.seed, args.fleet_size, args.invalid_probability)
    events = 0

    def send(n: int) -> None:
        nonlocal events
        bodies: list[str] = []
        attributes: list[MessageAttributes | None] = []
        senders: list[str | None] = []
        for device, doc in itertools.islice(submissions, n):
            events += sum(len(v) for v in doc["events"].values())
            body = encode(doc)
            bodies.append(body)
            attributes.append(None if signer is None else signer.attributes(device, body))
            senders.append(device)
        sender.send(bodies, attributes, senders)

    began = time.monotonic()
    if args.count is not None:
        remaining = args.count
        while remaining > 0 and not stop.is_set():
            n = min(100, remaining)
            send(n)
            remaining -= n
    else:
        target = args.rate * args.duration
        sent = 0
        while sent < target and not stop.is_set():
            due = min(target, args.rate * (time.monotonic() - began)) - sent
            if due >= 1:
                n = int(min(due, 100))
                send(n)
                sent += n
            else:
                stop.wait(min(0.05, 1 / args.rate))  # pacing to the rate, not synchronisation
    elapsed = time.monotonic() - began
    print(
        f"sent {sender.sent} submissions ({events} events) in {elapsed:.2f} s "
        f"({sender.sent / elapsed if elapsed else 0:.0f}/s), dropped {sender.dropped}"
    )
    return exitcodes.OK


def run_host(
    args: argparse.Namespace,
    sender: Sender,
    stop: threading.Event,
    signer: DeviceSigner | None,
    agent_id: str,
) -> int:
    agent = HostAgent(agent_id)
    scans = 0
    while not stop.is_set():
        processes, connections = agent.scan()
        doc = agent.submission(processes, connections, datetime.now().isoformat())
        if any(doc["events"].values()):
            body = encode(doc)
            sender.send(
                [body], None if signer is None else [signer.attributes(body)], [agent.device_id]
            )
            log.info(
                "host scan sent",
                extra={
                    "action": "scan",
                    "processes": len(doc["events"]["new_process"]),
                    "connections": len(doc["events"]["network_connection"]),
                },
            )
        scans += 1
        # A test (and an operator tailing the log) knows the baseline is taken.
        log.debug("host scan %d done", scans, extra={"action": "scanned", "scan": scans})
        if args.rounds and scans >= args.rounds:
            break
        stop.wait(args.interval)
    print(f"device {agent.device_id}: sent {sender.sent} submissions in {scans} scans")
    return exitcodes.OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=_env("LOG_LEVEL", "INFO"), stream=sys.stderr)
    # botocore says at INFO where it found the credentials and the endpoint, for every client.
    logging.getLogger("botocore").setLevel(max(logging.WARNING, logging.getLogger().level))
    mode = args.mode or "simulate"
    if args.mode is None:  # bare `sensor-fleet` means simulate with its defaults
        args = build_parser().parse_args([*(argv or sys.argv[1:]), "simulate"])
    try:
        settings = aws.settings_of(args)
    except ValidationError as exc:
        print(config.explain(exc), file=sys.stderr)
        return exitcodes.USAGE
    device: DeviceSigner | None = None
    fleet: FleetSigner | None = None
    agent_id = ""
    try:
        # Before any client: a key set that cannot be read stops the fleet before it sends.
        if mode == "host":
            device = host_signer(args, settings)
            # Enrolled, the agent is the device it was enrolled as.
            agent_id = agent_device_id(args.state_file) if device is None else device.device_id
        else:
            fleet = fleet_signer(args, settings)
        client = sqs_client(args.localstack, settings)
        sender = Sender(client, aws.source_queue_url(client, settings))
    except aws.UsageError as exc:
        print(exc, file=sys.stderr)
        return exitcodes.USAGE
    except aws.ToolError as exc:
        print(exc, file=sys.stderr)
        return exitcodes.STARTUP_FAILED
    if (signer := device or fleet) is not None:
        log.info(
            "signing with key id %s",
            signer.key_id,
            extra={"action": "signing", "key_id": signer.key_id},
        )
    if sender.fifo:
        log.info(
            "FIFO queue: each device's submissions go in its own message group, in order",
            extra={"action": "fifo"},
        )
    stop = threading.Event()
    with signals.stop_on_signals(stop):
        try:
            if mode == "host":
                return run_host(args, sender, stop, device, agent_id)
            runner = run_load if mode == "load" else run_simulate
            return runner(args, sender, stop, fleet)
        except KeyboardInterrupt:  # a second signal
            return exitcodes.INTERRUPTED
