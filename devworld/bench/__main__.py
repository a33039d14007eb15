"""`make bench` / `python -m devworld.bench`: drain the same backlog several ways; print a table.

The daemon drains it twice, with AUTH_MODE=off (`daemon`) and enforce (`daemon-enforce`, the
key set in an AUTH_KEYS_FILE), and the table is followed by enforce's cost against off. The
backlog is signed for every strategy (each submission's sensor-signature attribute, made with
a key set of the bench's own), so the two daemon rows differ in AUTH_MODE alone.

`--scenario` adds the scenarios of bench/scenarios.py: memory, hostile, restart, dlq-outage,
fifo, or all of them after the throughput table; `make bench` runs all.

World: moto's server (devworld.emulator, patched: locks + O(1) speed-ups) behind an
HTTP proxy that adds a fixed latency to every AWS call, because on loopback every strategy
looks the same. Each strategy runs as its own process, timed from its start until the queue
is empty; CPU time and peak RSS come from the OS (wait4).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Final

from devworld.bench import scenarios
from devworld.bench.compare import Comparison, header, in_turn
from devworld.bench.daemon import Process, compile_daemon, daemon_env
from devworld.bench.workloads import BenchKeys, MessageAttributes, fleet_backlog, load
from devworld.emulator import Emulator, World, queue_depth, read_stream
from devworld.faultproxy import FaultProxy
from devworld.verify import decode_records, expected_sequences, verify
from event_processor.contract.parse import ParsedSubmission, parse_submission
from event_processor.contract.records import PartitionKey

# How often the runner looks at the queue depth while a strategy drains it.
_POLL_S = 0.05
_STRATEGY_TIMEOUT_S = 900.0
# A drained strategy has nothing in flight: it exits well within this after SIGTERM.
_STOP_TIMEOUT_S = 60.0
# The daemon's strategies: their AUTH_MODE (enforce reads the bench's key set).
DAEMON_MODES: Final = {"daemon": "off", "daemon-enforce": "enforce"}
STRATEGIES: Final = (*DAEMON_MODES, "naive", "ceiling")
# The strategies' name column.
_NAME_WIDTH = 16


@dataclass
class Result:
    name: str
    seconds: float
    events: int
    cpu_s: float
    peak_rss_mb: float
    # CPU seconds to start on an idle queue (daemon: until /readyz; the others: until they
    # exit on finding it empty), the start-up share of cpu_s.
    startup_cpu_s: float = 0.0
    verified: str = ""

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6 if self.events else 0.0

    @property
    def steady_us_per_event(self) -> float:
        """CPU per event once started: what the drain itself costs."""
        return (self.cpu_s - self.startup_cpu_s) / self.events * 1e6 if self.events else 0.0


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_strategy(
    name: str, argv: list[str], env: dict[str, str], emulator: Emulator, world: World
) -> tuple[float, float, float]:
    """Start the process, wait for an empty queue, stop it; (seconds, cpu_s, peak_rss_mb)."""
    sqs = emulator.boto3_client("sqs")
    world_cpu_before = _self_cpu()
    began = time.monotonic()
    # Through bench.launch: started from this process, its ru_maxrss would include ours.
    with Process(argv, env) as process:
        while queue_depth(sqs, world.queue_url) > 0:
            if process.poll() is not None and queue_depth(sqs, world.queue_url) > 0:
                raise RuntimeError(f"{name} exited with {process.poll()} before draining")
            if time.monotonic() - began > _STRATEGY_TIMEOUT_S:
                raise RuntimeError(f"{name} did not drain in {_STRATEGY_TIMEOUT_S:g} s")
            time.sleep(_POLL_S)
        seconds = time.monotonic() - began
        world_cpu = _self_cpu() - world_cpu_before
        print(
            f"  {name}: drained in {seconds:.2f} s; the world (moto + proxy) used "
            f"{world_cpu:.2f} s CPU = {world_cpu / seconds:.0%} of one core",
            flush=True,
        )
        result = process.stop(_STOP_TIMEOUT_S)
    return seconds, result.cpu_s, result.peak_rss_mb


def startup_cpu(env: dict[str, str], metrics_port: int) -> float:
    """CPU seconds the daemon spends to become ready (imports, clients, checks), idle queue."""
    argv = [sys.executable, "-m", "event_processor", "run"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)  # noqa: S603
    url = f"http://127.0.0.1:{metrics_port}/readyz"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(_POLL_S)
    process.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(process.pid, 0)
    return usage.ru_utime + usage.ru_stime


def exit_cpu(argv: list[str], env: dict[str, str]) -> float:
    """CPU seconds of a command that exits by itself (naive and ceiling, on an idle queue)."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)  # noqa: S603
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped by wait4: Popen must not wait for it again
    return usage.ru_utime + usage.ru_stime


def hot_path_us(bodies: list[str]) -> float:
    """decode + validate + encode + build each record, per accepted event: the daemon's path
    (parse_submission, then the record the sink builds when it sends it)."""
    events = 0
    began = time.perf_counter()
    for body in bodies:
        parsed = parse_submission(body, "2026-01-01T00:00:00.000000Z", PartitionKey.DEVICE_ID)
        if isinstance(parsed, ParsedSubmission):
            records = parsed.records
            for index in range(len(records)):
                records[index]  # building it is what is timed
            events += len(records)
    return (time.perf_counter() - began) / events * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    # Issue 13's world: 2,000 fleet submissions, ~15,400 valid events.
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--only", nargs="*", choices=STRATEGIES, default=list(STRATEGIES), help="strategies to run"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of the strategies, back to back (in reverse order every other round);"
        " medians are printed after the rows",
    )
    parser.add_argument(
        "--scenario",
        nargs="+",
        choices=("throughput", *scenarios.SCENARIOS, "all"),
        default=["throughput"],
        help="throughput is the strategies table above; all runs it and then every scenario",
    )
    scenarios.add_arguments(parser)
    args = parser.parse_args()
    names = ["throughput", *scenarios.SCENARIOS] if "all" in args.scenario else args.scenario
    compile_daemon()

    ok = throughput(args) if "throughput" in names else True
    chosen = [name for name in scenarios.SCENARIOS if name in names]
    if chosen:
        ok = scenarios.run(chosen, args) and ok
    print(
        f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, bench process peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    return 0 if ok else 1


def throughput(args: argparse.Namespace) -> bool:
    """The strategies table: the daemon (off and enforce), naive and ceiling drain the same
    signed fleet backlog.

    `--repeat N` runs the strategies N times, back to back in turn (`in_turn`), each on a
    world of its own, and prints the medians too: this VM is shared, so one run is one sample.
    """
    submissions = fleet_backlog(args.submissions, args.seed)
    bodies = [body for _, body in submissions]
    keys = BenchKeys.new()
    attributes = keys.sign(submissions)
    expected = expected_sequences(bodies)
    valid_events = sum(len(s) for s in expected.values())
    print(f"hot path (decode+validate+build+serialize): {hot_path_us(bodies * 5):.2f} µs/event")

    results: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-keys-") as key_dir,
        Emulator() as emulator,
        FaultProxy(emulator.endpoint_url) as proxy,
    ):
        key_file = keys.write(Path(key_dir))
        proxy.latency_s = args.latency_ms / 1000
        print(
            f"world: moto {emulator.endpoint_url} (patched: locked mutations, O(1) receive/put), "
            f"proxy {proxy.endpoint_url} adding {args.latency_ms:g} ms per AWS call"
        )
        print(
            f"backlog: {len(bodies)} submissions, {valid_events} valid events, each signed"
            f" (key set {key_file} for AUTH_MODE=enforce)\n"
        )
        # Start-up is measured on a queue that stays empty: what a strategy costs before work.
        idle = emulator.create_world(
            queue_name="bench-idle", dlq_name="bench-idle-dlq", stream_name="bench-idle"
        )
        for round_ in range(args.repeat):
            for name in in_turn(args.only, round_):
                result = _one_strategy(
                    name,
                    f"{name}-{round_}",
                    emulator=emulator,
                    proxy=proxy,
                    idle=idle,
                    bodies=bodies,
                    attributes=attributes,
                    expected=expected,
                    key_file=key_file,
                )
                results.append(result)
    _print_table(results)
    return all(not r.verified.startswith("FAILED") for r in results)


def _one_strategy(
    name: str,
    world_name: str,
    *,
    emulator: Emulator,
    proxy: FaultProxy,
    idle: World,
    bodies: list[str],
    attributes: list[MessageAttributes],
    expected: dict[str, list[int]],
    key_file: Path,
) -> Result:
    """Drain a fresh copy of the backlog with one strategy; its figures and verification."""
    world = emulator.create_world(
        queue_name=f"bench-{world_name}",
        dlq_name=f"bench-{world_name}-dlq",
        stream_name=f"bench-{world_name}",
    )
    load(emulator, world, bodies, attributes)
    valid_events = sum(len(s) for s in expected.values())
    if name in DAEMON_MODES:
        mode = DAEMON_MODES[name]
        auth = {"AUTH_MODE": mode}
        if mode != "off":
            auth["AUTH_KEYS_FILE"] = str(key_file)
        env = daemon_env(emulator, world, proxy.endpoint_url, **auth)
        argv = [sys.executable, "-m", "event_processor", "run"]
        idle_env = env | {
            "QUEUE_URL": idle.queue_url,
            "DLQ_URL": idle.dlq_url,
            "STREAM_NAME": idle.stream_name,
        }
        startup = startup_cpu(idle_env, int(env["METRICS_PORT"]))
    else:
        env = {**os.environ, **emulator.client_env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
        module = f"devworld.bench.{name}"
        argv = [sys.executable, "-m", module, world.queue_url, world.stream_name]
        startup = exit_cpu([sys.executable, "-m", module, idle.queue_url, idle.stream_name], env)
    calls_before = proxy.stats()["calls"]
    seconds, cpu_s, rss = run_strategy(name, argv, env, emulator, world)
    calls = {
        op: n - calls_before.get(op, 0)
        for op, n in proxy.stats()["calls"].items()
        if n > calls_before.get(op, 0)
    }
    print(f"    AWS calls: {sum(calls.values())} {dict(sorted(calls.items()))}")
    records = read_stream(emulator.boto3_client("kinesis"), world.stream_name)
    result = Result(name, seconds, valid_events, cpu_s, rss, startup)
    if name in DAEMON_MODES:
        check = verify(decode_records(records), expected)
        result.verified = "ok" if check.ok else "FAILED: " + check.summary()
    else:
        result.verified = f"{len(records)} records, unordered"
    print(
        f"    start-up (idle queue): {startup:.2f} s CPU; "
        f"the rest: {result.steady_us_per_event:.1f} µs/event",
        flush=True,
    )
    return result


def _print_table(results: list[Result]) -> None:
    """Every run's row, then (over several rounds) each strategy's medians."""
    rounds: dict[str, list[Result]] = {}
    for r in results:
        rounds.setdefault(r.name, []).append(r)
    print(
        f"\n{'strategy':<{_NAME_WIDTH}}{'events/s':>10}{'x naive':>9}{'x ceiling':>10}"
        f"{'CPU µs/ev':>11}{'start-up s':>12}{'steady µs/ev':>14}{'peak RSS MB':>13}  verified"
    )
    for index, r in enumerate(results):
        # Compared with the other strategies of the same round: they ran back to back.
        round_ = sum(1 for other in results[:index] if other.name == r.name)
        naive = _nth(rounds.get("naive"), round_)
        ceiling = _nth(rounds.get("ceiling"), round_)
        x_naive = f"{r.events_per_s / naive.events_per_s:.1f}" if naive else "-"
        x_ceiling = f"{r.events_per_s / ceiling.events_per_s:.2f}" if ceiling else "-"
        print(
            f"{r.name:<{_NAME_WIDTH}}{r.events_per_s:>10.0f}{x_naive:>9}{x_ceiling:>10}"
            f"{r.cpu_us_per_event:>11.1f}{r.startup_cpu_s:>12.2f}{r.steady_us_per_event:>14.1f}"
            f"{r.peak_rss_mb:>13.1f}  {r.verified}"
        )
    ceilings = rounds.get("ceiling", [])
    for name in DAEMON_MODES:
        for daemon, ceiling in zip(rounds.get(name, []), ceilings, strict=False):
            print(
                f"{name} / ceiling CPU per event: "
                f"{daemon.cpu_us_per_event / ceiling.cpu_us_per_event:.2f} all in, "
                f"{daemon.steady_us_per_event / ceiling.steady_us_per_event:.2f} steady"
            )
    if any(len(runs) > 1 for runs in rounds.values()):
        print("\nmedians:")
        for name, runs in rounds.items():
            print(
                f"{name:<{_NAME_WIDTH}}{median(r.events_per_s for r in runs):>10.0f} events/s"
                f"{median(r.cpu_us_per_event for r in runs):>8.1f} µs/ev all in"
                f"{median(r.startup_cpu_s for r in runs):>7.2f} s start-up"
                f"{median(r.steady_us_per_event for r in runs):>8.1f} µs/ev steady"
            )
    off, enforce = (rounds.get(name, []) for name in DAEMON_MODES)
    if off and len(off) == len(enforce):
        print(f"\n{header(len(off))}")
        figures: tuple[tuple[str, Callable[[Result], float], bool], ...] = (
            ("CPU µs/event, all in", lambda r: r.cpu_us_per_event, False),
            ("CPU µs/event, steady", lambda r: r.steady_us_per_event, False),
            ("events/s", lambda r: r.events_per_s, True),
        )
        for label, figure, relative in figures:
            values = Comparison.of([figure(r) for r in off], [figure(r) for r in enforce])
            print(values.line(label, digits=0 if relative else 1, relative=relative))


def _nth(runs: list[Result] | None, index: int) -> Result | None:
    return runs[index] if runs and index < len(runs) else None


if __name__ == "__main__":
    raise SystemExit(main())
