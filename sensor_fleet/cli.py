"""`sensor-fleet [simulate|load|host]`: emulated EDR agents sending submissions to SQS."""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from event_processor import config, exitcodes, signals
from event_processor.tools import aws
from sensor_fleet.generator import device_ids, encode, fleet_load, make_submission
from sensor_fleet.host import HostAgent, machine_device_id, read_host
from sensor_fleet.sender import Sender, sqs_client

log = logging.getLogger("sensor_fleet")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sensor-fleet", description=__doc__)
    # The daemon's own settings (env and flags), so both resolve the same queue and region.
    aws.add_flags(parser, "queue_url", "queue_name")
    parser.add_argument(
        "--localstack",
        action="store_true",
        help="use localstack-client (also implied by LOCALSTACK_HOST)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    modes = parser.add_subparsers(dest="mode")

    simulate = modes.add_parser("simulate", help="the original fleet (default)")
    simulate.add_argument("--fleet-size", type=int, default=int(_env("FLEET_SIZE", "10")))
    simulate.add_argument(
        "--invalid-probability", type=float, default=float(_env("INVALID_PROBABILITY", "0.01"))
    )
    simulate.add_argument("--round-min", type=float, default=float(_env("ROUND_MIN_SECONDS", "30")))
    simulate.add_argument("--round-max", type=float, default=float(_env("ROUND_MAX_SECONDS", "45")))
    simulate.add_argument("--rounds", type=int, default=0, help="stop after N rounds (0: never)")

    load = modes.add_parser("load", help="send fast, for benchmarks")
    what = load.add_mutually_exclusive_group(required=True)
    what.add_argument("--count", type=int, help="send N submissions as fast as possible")
    what.add_argument("--rate", type=float, help="submissions per second (with --duration)")
    load.add_argument("--duration", type=float, default=10.0)
    load.add_argument("--fleet-size", type=int, default=int(_env("FLEET_SIZE", "100")))
    load.add_argument(
        "--invalid-probability", type=float, default=float(_env("INVALID_PROBABILITY", "0.01"))
    )

    host = modes.add_parser("host", help="a real agent for this machine")
    host.add_argument("--interval", type=float, default=float(_env("HOST_INTERVAL_SECONDS", "10")))
    host.add_argument("--rounds", type=int, default=0, help="stop after N scans (0: never)")
    return parser


def run_simulate(args: argparse.Namespace, sender: Sender, stop: threading.Event) -> int:
    rng = random.Random(args.seed)
    devices = device_ids(args.fleet_size, seed=args.seed or 0)
    rounds = 0
    while not stop.is_set():
        bodies = [encode(make_submission(rng, d, args.invalid_probability)) for d in devices]
        accepted = len(sender.send(bodies))
        rounds += 1
        log.info("round sent", extra={"action": "round", "round": rounds, "accepted": accepted})
        if args.rounds and rounds >= args.rounds:
            break
        stop.wait(rng.uniform(args.round_min, args.round_max))
    print(f"sent {sender.sent} submissions in {rounds} rounds, dropped {sender.dropped}")
    return exitcodes.OK


def run_load(args: argparse.Namespace, sender: Sender, stop: threading.Event) -> int:
    submissions = fleet_load(args.seed, args.fleet_size, args.invalid_probability)
    events = 0

    def batch(n: int) -> list[str]:
        nonlocal events
        docs: list[dict[str, Any]] = [next(submissions) for _ in range(n)]
        events += sum(len(v) for d in docs for v in d["events"].values())
        return [encode(d) for d in docs]

    began = time.monotonic()
    if args.count is not None:
        remaining = args.count
        while remaining > 0 and not stop.is_set():
            n = min(100, remaining)
            sender.send(batch(n))
            remaining -= n
    else:
        target = args.rate * args.duration
        sent = 0
        while sent < target and not stop.is_set():
            due = min(target, args.rate * (time.monotonic() - began)) - sent
            if due >= 1:
                n = int(min(due, 100))
                sender.send(batch(n))
                sent += n
            else:
                stop.wait(min(0.05, 1 / args.rate))  # pacing to the rate, not synchronisation
    elapsed = time.monotonic() - began
    print(
        f"sent {sender.sent} submissions ({events} events) in {elapsed:.2f} s "
        f"({sender.sent / elapsed if elapsed else 0:.0f}/s), dropped {sender.dropped}"
    )
    return exitcodes.OK


def run_host(args: argparse.Namespace, sender: Sender, stop: threading.Event) -> int:
    agent = HostAgent(machine_device_id())
    scans = 0
    while not stop.is_set():
        ps_output, tcp = read_host()
        processes, connections = agent.scan(ps_output, tcp)
        if processes or connections:
            doc = agent.submission(processes, connections, datetime.now().isoformat())
            sender.send([encode(doc)])
            log.info(
                "host scan sent",
                extra={
                    "action": "scan",
                    "processes": len(processes),
                    "connections": len(connections),
                },
            )
        scans += 1
        if args.rounds and scans >= args.rounds:
            break
        stop.wait(args.interval)
    print(f"device {agent.device_id}: sent {sender.sent} submissions in {scans} scans")
    return exitcodes.OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=_env("LOG_LEVEL", "INFO"), stream=sys.stderr)
    mode = args.mode or "simulate"
    if args.mode is None:  # bare `sensor-fleet` means simulate with its defaults
        args = build_parser().parse_args([*(argv or sys.argv[1:]), "simulate"])
    try:
        settings = aws.settings_of(args)
    except ValidationError as exc:
        print(config.explain(exc), file=sys.stderr)
        return exitcodes.USAGE
    client = sqs_client(args.localstack, settings)
    sender = Sender(client, aws.source_queue_url(client, settings))
    stop = threading.Event()
    runners = {"simulate": run_simulate, "load": run_load, "host": run_host}
    with signals.stop_on_signals(stop):
        try:
            return runners[mode](args, sender, stop)
        except KeyboardInterrupt:  # a second signal
            return exitcodes.INTERRUPTED
