"""The scenarios of `make bench`: memory, hostile bodies, a restart on a slow stream (issue 10),
an outage of the DLQ (issue 21), and a FIFO backlog against a standard one (issue 22).

Each drains its own world (queue, DLQ, stream) with the daemon as a subprocess, through the
fault proxy, and reports what the OS, the queues and the stream say: nothing here reads the
daemon's internals, so the same scenarios measure the daemon before and after a rewrite.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devworld.bench.daemon import Daemon, Exit, daemon_env
from devworld.bench.dlq_watch import MODES, DeadLetterWatch
from devworld.bench.fifo import (
    GroupedBacklog,
    grouped_backlog,
    load_grouped,
)
from devworld.bench.workloads import (
    HOSTILE_KINDS,
    SQS_MAX_BYTES,
    backlog,
    hostile_body,
    large_bodies,
    load,
    tiny_events_body,
)
from devworld.emulator import Emulator, World, queue_depth
from devworld.faultproxy import SHARD_THROTTLED, FaultProxy
from devworld.verify import (
    DeviceOrder,
    Verification,
    decode_records,
    expected_sequences,
    verify,
    verify_device_order,
)
from event_processor.tools.aws import get_records
from sensor_fleet.generator import device_ids

SCENARIOS = ("memory", "hostile", "restart", "dlq-outage", "fifo")
MIB = 1024 * 1024

# How often a scenario looks at the queues while a daemon works.
_POLL_S = 0.1
# Beyond its own grace, how long a stopped daemon may take to exit before it is killed.
_EXIT_SLACK_S = 20.0
# The daemon's own SHUTDOWN_GRACE_SECONDS default (docs/deployment.md, "Settings"), for the memory run.
_DEFAULT_GRACE_S = 20.0
# The grace given to a hostile body's daemon: short, so that stopping it at the cap stays bounded.
_HOSTILE_GRACE_S = 5.0
# How long the second daemon of the restart may take to answer /readyz.
_READY_TIMEOUT_S = 60.0
# Large bodies: sizes drawn between these, a little under SQS's 1 MiB limit at most.
_LARGE_MIN_BYTES = 3 * MIB // 4
_LARGE_MAX_BYTES = SQS_MAX_BYTES - 4096


@dataclass(frozen=True)
class Bench:
    """The shared world: one emulator behind one fault proxy, and the run's options."""

    emulator: Emulator
    proxy: FaultProxy
    args: argparse.Namespace

    def world(self, name: str, **options: Any) -> World:
        """A world of its own for one scenario; `options` as create_world takes them."""
        return self.emulator.create_world(
            queue_name=f"bench-{name}",
            dlq_name=f"bench-{name}-dlq",
            stream_name=f"bench-{name}",
            **options,
        )

    def env(self, world: World, **settings: str) -> dict[str, str]:
        return daemon_env(self.emulator, world, self.proxy.endpoint_url, **settings)

    def counters(self) -> dict[str, dict[str, int]]:
        """The proxy's counters now, to compare with later (calls, forwarded, injected)."""
        return self.proxy.stats()

    def calls_since(self, before: dict[str, dict[str, int]]) -> str:
        """The daemons' AWS calls since `before`, by operation, and throttled Kinesis entries."""
        now = self.proxy.stats()
        calls = {
            op: n - before["calls"].get(op, 0)
            for op, n in sorted(now["calls"].items())
            if n > before["calls"].get(op, 0)
        }
        throttled = now["injected"].get(SHARD_THROTTLED, 0) - before["injected"].get(
            SHARD_THROTTLED, 0
        )
        line = f"  AWS calls: {sum(calls.values())} {calls}"
        return line + (f"; PutRecords entries throttled: {throttled}" if throttled else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The scenarios' options; defaults are the issue's sizes."""
    group = parser.add_argument_group("scenarios memory, hostile, restart")
    group.add_argument("--large-bodies", type=int, default=48, help="near-1 MiB valid bodies")
    group.add_argument(
        "--tiny-bodies", type=int, default=2, help="bodies filled with tiny valid events"
    )
    group.add_argument(
        "--memory-fleet", type=int, default=1000, help="fleet bodies mixed into the big ones"
    )
    # The baseline drained in 759 s: one lane publishes one record per round trip.
    group.add_argument("--memory-cap-s", type=float, default=900.0)
    group.add_argument("--hostile-items", type=int, default=120_000)
    group.add_argument("--hostile-kinds", nargs="*", choices=HOSTILE_KINDS, default=HOSTILE_KINDS)
    group.add_argument("--hostile-cap-s", type=float, default=120.0, help="per hostile body")
    group.add_argument(
        "--hostile-dlq",
        choices=MODES,
        default="keep",
        help="count what is left in the DLQ, or consume it while counting (moto's sends slow "
        "down as a queue fills)",
    )
    group.add_argument("--restart-submissions", type=int, default=2000)
    group.add_argument("--restart-shard-rate", type=float, default=150.0, help="records/s/shard")
    group.add_argument("--restart-after-s", type=float, default=6.0, help="SIGTERM after")
    group.add_argument("--restart-grace-s", type=float, default=10.0)
    group.add_argument("--restart-cap-s", type=float, default=300.0)
    # The issue-21 report: fleet traffic, adversarial bodies, the DLQ answering 503 for 60 s.
    group.add_argument("--outage-submissions", type=int, default=400, help="fleet bodies")
    group.add_argument("--outage-hostile", type=int, default=6, help="bodies of invalid events")
    group.add_argument("--outage-junk", type=int, default=6, help="bodies rejected whole")
    group.add_argument("--outage-s", type=float, default=60.0, help="the DLQ down this long")
    group.add_argument("--outage-visibility-s", type=int, default=10)
    group.add_argument("--outage-max-receives", type=int, default=5, help="maxReceiveCount")
    group.add_argument("--outage-cap-s", type=float, default=240.0)
    # Issue 22: the same backlog on a standard queue and on a FIFO queue grouped by device.
    group.add_argument("--fifo-devices", type=int, default=50, help="devices (FIFO groups)")
    group.add_argument(
        "--fifo-per-device", type=int, default=20, help="submissions each device sends, in order"
    )
    group.add_argument(
        "--fifo-groups",
        type=int,
        nargs="*",
        default=[10, 250],
        help="further FIFO runs of the same total (devices x per-device) over this many devices",
    )
    group.add_argument(
        "--fifo-invalid", type=float, default=0.01, help="share of broken fields, as the fleet"
    )
    group.add_argument("--fifo-cap-s", type=float, default=300.0, help="per run")


def run(names: list[str], args: argparse.Namespace) -> bool:
    """Run the named scenarios in one emulator world; False if a read-back check failed."""
    ok = True
    with Emulator() as emulator, FaultProxy(emulator.endpoint_url) as proxy:
        proxy.latency_s = args.latency_ms / 1000
        bench = Bench(emulator, proxy, args)
        scenario: dict[str, Callable[[Bench], bool]] = {
            "memory": memory,
            "hostile": hostile,
            "restart": restart,
            "dlq-outage": dlq_outage,
            "fifo": fifo,
        }
        for name in names:
            # The machine may be shared: say how busy it was when the scenario began.
            load_1m = os.getloadavg()[0]
            print(
                f"\n== {name} == (proxy adds {args.latency_ms:g} ms per AWS call; "
                f"load average {load_1m:.2f} at the start)",
                flush=True,
            )
            ok = scenario[name](bench) and ok
            # moto keeps every message and record in this process: drop them between scenarios.
            emulator.reset()
    return ok


# --- measuring ----------------------------------------------------------------------------


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def drain(
    bench: Bench,
    daemon: Daemon,
    world: World,
    cap_s: float,
    tick: Callable[[float], None] | None = None,
) -> tuple[float, bool]:
    """Wait until the queue is empty, the daemon exits or cap_s passes: (seconds, drained).

    Seconds count from the daemon's start, start-up included; `tick(seconds)` runs each poll.
    """
    sqs = bench.emulator.boto3_client("sqs")
    world_cpu = _self_cpu()
    while True:
        seconds = time.monotonic() - daemon.started
        if tick is not None:
            tick(seconds)
        if queue_depth(sqs, world.queue_url) == 0:
            drained = True
            break
        if daemon.poll() is not None or seconds > cap_s:
            drained = False
            break
        time.sleep(_POLL_S)
    world_cpu = _self_cpu() - world_cpu
    print(
        f"  the world (moto + proxy, in this process) used {world_cpu:.1f} s CPU "
        f"= {world_cpu / seconds:.0%} of one core",
        flush=True,
    )
    return seconds, drained


def read_arrivals(kinesis: Any, stream_name: str) -> tuple[list[dict[str, Any]], list[float]]:
    """Every record from TRIM_HORIZON, decoded, and its ApproximateArrivalTimestamp (epoch s).

    emulator.read_stream drops the arrival time, which the latency figures need; moto sets it
    when it stores a record, with millisecond resolution.
    """
    raw: list[dict[str, Any]] = []
    arrivals: list[float] = []
    shards = kinesis.list_shards(StreamName=stream_name)["Shards"]
    for shard_id in sorted(shard["ShardId"] for shard in shards):
        iterator = kinesis.get_shard_iterator(
            StreamName=stream_name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = get_records(kinesis, iterator)
            for record in page["Records"]:
                raw.append(
                    {
                        "shard_id": shard_id,
                        "sequence_number": record["SequenceNumber"],
                        "partition_key": record["PartitionKey"],
                        "data": record["Data"],
                    }
                )
                arrivals.append(record["ApproximateArrivalTimestamp"].timestamp())
            # An empty page at the tip ends the shard (as in emulator.read_stream).
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
            iterator = page.get("NextShardIterator")
    return decode_records(raw), arrivals


def completions(records: list[dict[str, Any]], arrivals: list[float]) -> dict[str, float]:
    """When each submission had every one of its events on the stream at least once (epoch s).

    That is the latest of its events' first arrivals: duplicates that come later do not count.
    """
    first: dict[tuple[str, int], float] = {}
    for record, arrived in zip(records, arrivals, strict=True):
        key = (record["submission_id"], record["sequence"])
        first[key] = min(arrived, first.get(key, arrived))
    done: dict[str, float] = {}
    for (submission_id, _), arrived in first.items():
        done[submission_id] = max(arrived, done.get(submission_id, arrived))
    return done


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of a non-empty list (share in 0..1)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * share)) - 1]


def distribution(values: list[float]) -> str:
    if not values:
        return "none"
    return (
        f"p50 {percentile(values, 0.5):.1f}  p90 {percentile(values, 0.9):.1f}  "
        f"p99 {percentile(values, 0.99):.1f}  max {max(values):.1f} s"
    )


def duplicate_share(check: Verification) -> tuple[int, float]:
    """(unique events on the stream, records beyond the first copy / unique)."""
    unique = check.records - check.duplicates
    return unique, (check.duplicates / unique if unique else 0.0)


def verdict(check: Verification, *, drained: bool) -> str:
    """ok; or what is missing (expected when not drained) and any order fault (never expected)."""
    if check.ok:
        return "ok"
    faults = (
        check.out_of_order or check.unexpected or check.changed_ids or check.split_across_shards
    )
    if not drained and not faults:
        return f"partial: {len(check.missing)} events not published yet, none out of order"
    return "FAILED: " + check.summary()


def _failed(check: Verification, *, drained: bool) -> bool:
    return verdict(check, drained=drained).startswith("FAILED")


def _exit_line(name: str, result: Exit) -> str:
    how = "killed after" if result.killed else "exited after"
    line = (
        f"  {name}: exit code {result.code}, {how} {result.stop_s:.1f} s from SIGTERM; "
        f"CPU {result.cpu_s:.1f} s, peak RSS {result.peak_rss_mb:.1f} MB"
    )
    if result.code != 0 or result.killed:
        line += "\n    log tail: " + result.log_tail.replace("\n", "\n    ")
    return line


# --- 1. memory ------------------------------------------------------------------------------


def memory(bench: Bench) -> bool:
    """Fleet traffic mixed with near-1 MiB bodies and tiny-event bodies, default settings."""
    args = bench.args
    rng = random.Random(args.seed)
    fleet = backlog(args.memory_fleet, args.seed)
    large = large_bodies(args.large_bodies, args.seed, _LARGE_MIN_BYTES, _LARGE_MAX_BYTES)
    devices = device_ids(args.tiny_bodies or 1, args.seed + 2)
    # Half plain JSON (the most events a body can hold), half base64 as the fleet sends.
    tiny = [tiny_events_body(rng, devices[i], base64=i % 2 == 1) for i in range(args.tiny_bodies)]
    classes = {"fleet": fleet, "large": large, "tiny": tiny}
    expected_by_class = {name: expected_sequences(bodies) for name, bodies in classes.items()}
    for name, bodies in classes.items():
        events = [len(s) for s in expected_by_class[name].values()]
        sizes = [len(b) for b in bodies]
        if bodies:
            print(
                f"  {name}: {len(bodies)} bodies of {min(sizes) / MIB:.3f}-{max(sizes) / MIB:.3f}"
                f" MiB, {sum(events)} valid events ({min(events)}-{max(events)} per body)"
            )
    bodies = fleet + large + tiny
    rng.shuffle(bodies)  # the big ones arrive among ordinary traffic
    expected = {k: v for by_id in expected_by_class.values() for k, v in by_id.items()}
    total = sum(len(s) for s in expected.values())

    world = bench.world("memory")
    load(bench.emulator, world, bodies)
    began = time.time()
    counters = bench.counters()
    with Daemon(bench.env(world)) as daemon:
        seconds, drained = drain(bench, daemon, world, args.memory_cap_s)
        result = daemon.stop(_DEFAULT_GRACE_S + _EXIT_SLACK_S)
    records, arrivals = read_arrivals(bench.emulator.boto3_client("kinesis"), world.stream_name)
    check = verify(records, expected)
    unique, _ = duplicate_share(check)

    done = completions(records, arrivals)
    for name, by_id in expected_by_class.items():
        finished = [done[s] - began for s, seqs in by_id.items() if s in done and seqs]
        if finished:
            print(
                f"  {name}: submissions complete on the stream after (from daemon start) "
                f"{distribution(finished)}; {len(by_id) - len(finished)} incomplete"
            )
    print(bench.calls_since(counters))
    print(_exit_line("daemon", result))
    state = f"drained in {seconds:.1f} s" if drained else f"not drained after {seconds:.0f} s"
    print(
        f"memory: {state}; {unique} of {total} events published, {unique / seconds:.0f} events/s;"
        f" peak RSS {result.peak_rss_mb:.1f} MB; verified {verdict(check, drained=drained)}",
        flush=True,
    )
    return not _failed(check, drained=drained)


# --- 2. hostile -----------------------------------------------------------------------------


def hostile(bench: Bench) -> bool:
    """One valid-looking body at a time whose events are all invalid; capped, partial if so."""
    for index, kind in enumerate(bench.args.hostile_kinds):
        hostile_one(bench, kind, bench.args.seed + index)
    return True


def hostile_one(bench: Bench, kind: str, seed: int) -> None:
    """Drain one hostile body in a world of its own; print time, dead letters and peak RSS."""
    args = bench.args
    body = hostile_body(kind, args.hostile_items, seed)
    world = bench.world(f"hostile-{kind.replace('_', '-')}")
    load(bench.emulator, world, [body])
    watch = DeadLetterWatch(bench.emulator, world.dlq_url, args.hostile_dlq)
    counters = bench.counters()
    try:
        with Daemon(bench.env(world, SHUTDOWN_GRACE_SECONDS=str(_HOSTILE_GRACE_S))) as daemon:
            seconds, drained = drain(
                bench, daemon, world, args.hostile_cap_s, lambda _: watch.poll()
            )
            result = daemon.stop(_HOSTILE_GRACE_S + _EXIT_SLACK_S)
            exited = time.monotonic()
    finally:
        # Counted once the daemon is gone, so that nothing arrives after the count.
        dead_letters = watch.stop()
    state = f"drained in {seconds:.1f} s" if drained else f"not drained after {seconds:.0f} s"
    if watch.first_at is not None:
        rate = (
            f"the first after {watch.first_at - daemon.started:.1f} s, then "
            f"{dead_letters / (exited - watch.first_at):.0f}/s until the exit"
        )
    else:
        rate = "none seen while draining"
    if watch.consumed:
        rate += f"; {watch.consumed_bytes / watch.consumed:.0f} bytes per message"
    print(bench.calls_since(counters))
    print(_exit_line("daemon", result))
    print(
        f"hostile {kind}: {args.hostile_items} invalid items, body {len(body) / MIB:.2f} MiB:"
        f" {state}; {dead_letters} SQS messages reached the DLQ ({args.hostile_dlq}: {rate});"
        f" peak RSS {result.peak_rss_mb:.1f} MB",
        flush=True,
    )


# --- 3. restart -----------------------------------------------------------------------------


def restart(bench: Bench) -> bool:
    """A rolling deploy on a throttled stream: SIGTERM the first daemon, a second one finishes."""
    args = bench.args
    bodies = backlog(args.restart_submissions, args.seed + 3)
    expected = expected_sequences(bodies)
    total = sum(len(s) for s in expected.values())
    world = bench.world("restart")
    load(bench.emulator, world, bodies)
    print(
        f"  backlog: {len(bodies)} submissions, {total} valid events; 2 shards throttled to "
        f"{args.restart_shard_rate:g} records/s each; SIGTERM after {args.restart_after_s:g} s, "
        f"SHUTDOWN_GRACE_SECONDS={args.restart_grace_s:g}"
    )
    grace = {"SHUTDOWN_GRACE_SECONDS": str(args.restart_grace_s)}
    bench.proxy.configure(shard_records_per_s=args.restart_shard_rate)
    counters = bench.counters()
    try:
        began = time.time()
        with Daemon(bench.env(world, **grace)) as first:
            # The deploy's timing is the scenario itself: the first daemon gets this long.
            deploy_at = first.started + args.restart_after_s
            while time.monotonic() < deploy_at and first.poll() is None:
                time.sleep(_POLL_S)
            first_exit = first.stop(args.restart_grace_s + _EXIT_SLACK_S)
        switched = time.time()
        with Daemon(bench.env(world, **grace)) as second:
            ready_s = second.wait_ready(_READY_TIMEOUT_S)
            seconds, drained = drain(bench, second, world, args.restart_cap_s)
            second_exit = second.stop(args.restart_grace_s + _EXIT_SLACK_S)
    finally:
        bench.proxy.configure(shard_records_per_s=0.0)

    records, arrivals = read_arrivals(bench.emulator.boto3_client("kinesis"), world.stream_name)
    check = verify(records, expected)
    unique, share = duplicate_share(check)
    by_first = sum(1 for arrived in arrivals if arrived < switched)
    done = completions(records, arrivals)
    latencies = [done[s] - began for s in expected if s in done]
    print(bench.calls_since(counters))
    print(_exit_line("first daemon", first_exit))
    print(_exit_line("second daemon", second_exit))
    state = f"drained in {seconds:.1f} s" if drained else f"not drained after {seconds:.0f} s"
    ready = f"ready after {ready_s:.1f} s" if ready_s is not None else "never ready"
    print(
        f"  second daemon {ready}, {state} (from its start); records on the stream: {len(records)} "
        f"({by_first} before the first daemon exited)"
    )
    print(
        f"restart: published twice {check.duplicates} of {unique} unique events = {share:.1%}; "
        f"first daemon exit code {first_exit.code} after {first_exit.stop_s:.1f} s; "
        f"verified {verdict(check, drained=drained)}"
    )
    print(
        f"restart: submission latency from scenario start to its last event on the stream "
        f"(ApproximateArrivalTimestamp), {len(latencies)} of {len(expected)} submissions: "
        f"{distribution(latencies)}",
        flush=True,
    )
    return not _failed(check, drained=drained)


# --- 4. dlq-outage --------------------------------------------------------------------------


def dlq_outage(bench: Bench) -> bool:
    """Fleet traffic and adversarial bodies while the DLQ answers 503 for `--outage-s`.

    Half the backlog is there at the start, the other half arrives halfway through the
    outage. What counts: valid submissions that SQS's redrive moved whole to the DLQ, valid
    events published more than once, and valid events that reached the stream while the DLQ
    was down.
    """
    args = bench.args
    rng = random.Random(args.seed + 21)
    fleet = backlog(args.outage_submissions, args.seed + 21)
    kinds = HOSTILE_KINDS
    hostile = [
        hostile_body(kinds[i % len(kinds)], 300, args.seed + i) for i in range(args.outage_hostile)
    ]
    junk = [f"not a submission {i}" for i in range(args.outage_junk)]
    bodies = fleet + hostile + junk
    rng.shuffle(bodies)
    expected = expected_sequences(bodies)
    valid_bodies = {body for body in bodies if expected_sequences([body])}
    total = sum(len(s) for s in expected.values())
    world = bench.world(
        "dlq-outage",
        visibility_timeout_s=args.outage_visibility_s,
        max_receive_count=args.outage_max_receives,
    )
    half = len(bodies) // 2
    print(
        f"  {len(bodies)} bodies ({len(fleet)} fleet, 1% broken fields; {len(hostile)} of 300 "
        f"invalid events; {len(junk)} junk), {total} valid events; visibility "
        f"{args.outage_visibility_s} s, maxReceiveCount {args.outage_max_receives}; the DLQ "
        f"answers 503 for the first {args.outage_s:g} s; {len(bodies) - half} bodies arrive "
        f"after {args.outage_s / 2:g} s"
    )
    sqs = bench.emulator.boto3_client("sqs")
    counters = bench.counters()
    began, seconds, drained, ended, result = _outage_run(bench, world, bodies[:half], bodies[half:])

    records, arrivals = read_arrivals(bench.emulator.boto3_client("kinesis"), world.stream_name)
    check = verify(records, expected)
    unique, share = duplicate_share(check)
    first: dict[tuple[str, int], float] = {}
    for record, arrived in zip(records, arrivals, strict=True):
        key = (record["submission_id"], record["sequence"])
        first[key] = min(arrived, first.get(key, arrived))
    during = sum(1 for arrived in first.values() if arrived < ended)
    dead = read_queue(sqs, world.dlq_url)
    redriven = [m for m in dead if "reason" not in m.get("MessageAttributes", {})]
    valid_redriven = sum(1 for m in redriven if m["Body"] in valid_bodies)
    calls = bench.proxy.stats()["calls"].get("PutRecords", 0) - counters["calls"].get(
        "PutRecords", 0
    )
    print(bench.calls_since(counters))
    print(_exit_line("daemon", result))
    state = f"drained in {seconds:.1f} s" if drained else f"not drained after {seconds:.0f} s"
    print(
        f"dlq-outage: {state}; {valid_redriven} valid submissions redriven whole by SQS "
        f"({len(redriven)} messages without a reason in the DLQ, {len(dead)} in all); "
        f"published twice {check.duplicates} of {unique} unique events = {share:.1%}; "
        f"{calls} PutRecords calls; {during} of {total} valid events on the stream before the "
        f"DLQ came back ({ended - began:.0f} s after the start); "
        f"verified {verdict(check, drained=drained)}",
        flush=True,
    )
    return not _failed(check, drained=drained)


def _outage_run(
    bench: Bench, world: World, first: list[str], later: list[str]
) -> tuple[float, float, bool, float, Exit]:
    """Start a daemon; once it is ready (start-up reads the DLQ's attributes), take the DLQ
    down for `--outage-s`, load `first` and, halfway through, `later`; run until the queue
    is empty after the outage (or the cap). (outage start, seconds from it, drained, outage
    end, exit); times from time.time()."""
    args = bench.args
    sqs = bench.emulator.boto3_client("sqs")
    outage_ends_at: float | None = None
    drained = False
    try:
        with Daemon(bench.env(world)) as daemon:
            if daemon.wait_ready(_READY_TIMEOUT_S) is None:
                raise RuntimeError("the daemon did not become ready")
            bench.proxy.configure(queues_down=frozenset({world.dlq_url}))
            began, started = time.time(), time.monotonic()
            load(bench.emulator, world, first)
            while daemon.poll() is None:
                seconds = time.monotonic() - started
                if later and seconds >= args.outage_s / 2:
                    load(bench.emulator, world, later)
                    later = []
                if outage_ends_at is None and seconds >= args.outage_s:
                    bench.proxy.configure(queues_down=frozenset())
                    outage_ends_at = time.time()
                if outage_ends_at is not None and queue_depth(sqs, world.queue_url) == 0:
                    drained = True
                    break
                if seconds > args.outage_cap_s:
                    break
                time.sleep(_POLL_S)
            seconds = time.monotonic() - started
            result = daemon.stop(_DEFAULT_GRACE_S + _EXIT_SLACK_S)
    finally:
        bench.proxy.configure(queues_down=frozenset())
    return began, seconds, drained, outage_ends_at or time.time(), result


def read_queue(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every message in `queue_url` with its attributes, hidden for the rest of the run."""
    messages: list[dict[str, Any]] = []
    while True:
        page: list[dict[str, Any]] = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            VisibilityTimeout=600,
            WaitTimeSeconds=0,
        ).get("Messages", [])
        if not page:
            return messages
        messages.extend(page)


# --- 5. fifo --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FifoRun:
    """One drain of a grouped backlog: what the table prints."""

    queue: str  # "standard" or "FIFO"
    groups: int
    submissions: int
    events: int
    ready_s: float  # from the daemon's start until /readyz answered
    seconds: float  # from the daemon's start until the queue was empty
    drained: bool
    put_calls: int
    records: int  # on the stream, duplicates included
    receives: int
    verified: str
    order: DeviceOrder

    @property
    def order_verdict(self) -> str:
        """FIFO promises each device's order; a standard queue does not (counted, not judged)."""
        if self.queue != "FIFO":
            return "not promised"
        return "ok" if self.order.ok else "FAILED"

    @property
    def busy_s(self) -> float:
        """The drain after start-up: what the rates are over."""
        return max(self.seconds - self.ready_s, 1e-9)

    @property
    def ok(self) -> bool:
        return not (self.verified.startswith("FAILED") or self.order_verdict == "FAILED")


def fifo(bench: Bench) -> bool:
    """The same grouped backlog drained from a standard queue and from a FIFO queue (groups =
    devices), then FIFO runs of the same total over other numbers of devices."""
    args = bench.args
    total = args.fifo_devices * args.fifo_per_device
    plans = [(False, args.fifo_devices), (True, args.fifo_devices)]
    plans += [(True, groups) for groups in args.fifo_groups if groups != args.fifo_devices]
    print(
        f"  {total} submissions per run ({args.fifo_invalid:.0%} broken fields), sent round by "
        f"round: every device's next submission in turn; the FIFO queue groups by device "
        f"(MessageGroupId), deduplicates by submission id; PARTITION_KEY=device_id (default)"
    )
    runs: list[FifoRun] = []
    for is_fifo, groups in plans:
        per_device = max(1, total // groups)
        backlog = grouped_backlog(groups, per_device, args.seed + 22, args.fifo_invalid)
        runs.append(_fifo_run(bench, backlog, is_fifo=is_fifo))
        # Each run on a fresh moto: the next one neither scans nor stores this one's data.
        bench.emulator.reset()
    _fifo_table(runs)
    return all(run.ok for run in runs)


def _fifo_run(bench: Bench, backlog: GroupedBacklog, *, is_fifo: bool) -> FifoRun:
    """Load the backlog into a fresh world of its kind, drain it with the daemon, read back."""
    args = bench.args
    kind = "FIFO" if is_fifo else "standard"
    bodies = backlog.bodies
    expected = expected_sequences(bodies)
    events = sum(len(s) for s in expected.values())
    world = bench.world(f"fifo-{kind.lower()}-{backlog.groups}", fifo=is_fifo)
    load_grouped(bench.emulator, world, backlog)
    print(
        f"  {kind} queue, {backlog.groups} devices x {len(bodies) // backlog.groups} "
        f"submissions: {len(bodies)} messages, {events} valid events",
        flush=True,
    )
    counters = bench.counters()
    with Daemon(bench.env(world)) as daemon:
        ready_s = daemon.wait_ready(_READY_TIMEOUT_S)
        seconds, drained = drain(bench, daemon, world, args.fifo_cap_s)
        result = daemon.stop(_DEFAULT_GRACE_S + _EXIT_SLACK_S)
    stats = bench.proxy.stats()["calls"]
    put_calls = stats.get("PutRecords", 0) - counters["calls"].get("PutRecords", 0)
    receives = stats.get("ReceiveMessage", 0) - counters["calls"].get("ReceiveMessage", 0)
    records, _ = read_arrivals(bench.emulator.boto3_client("kinesis"), world.stream_name)
    check = verify(records, expected)
    order = verify_device_order(records, backlog.published_by_device())
    print(bench.calls_since(counters))
    print(_exit_line("daemon", result))
    run = FifoRun(
        queue=kind,
        groups=backlog.groups,
        submissions=len(bodies),
        events=events,
        ready_s=ready_s if ready_s is not None else 0.0,
        seconds=seconds,
        drained=drained,
        put_calls=put_calls,
        records=len(records),
        receives=receives,
        verified=verdict(check, drained=drained),
        order=order,
    )
    state = f"drained in {seconds:.1f} s" if drained else f"not drained after {seconds:.0f} s"
    print(
        f"  {kind}, {run.groups} groups: {state} (ready after {run.ready_s:.1f} s); "
        f"{run.submissions / run.busy_s:.0f} submissions/s, {run.events / run.busy_s:.0f} "
        f"events/s after start-up; {put_calls} PutRecords calls, "
        f"{run.records / max(put_calls, 1):.1f} records a call; verified {run.verified}; "
        f"order per device {run.order_verdict}: {order.summary()}",
        flush=True,
    )
    return run


def _fifo_table(runs: list[FifoRun]) -> None:
    """One row per run; rates are over the drain after start-up (from /readyz to empty).

    A lane has one record in flight, so events/s = PutRecords calls/s x records per call; on
    a FIFO queue a group has one submission publishing at a time, so records per call is at
    most the groups, and `busy` is the share of them that had a record in the average call.
    """
    print(
        f"\n{'queue':<9}{'groups':>7}{'subs':>6}{'events':>7}{'drain s':>9}{'subs/s':>8}"
        f"{'events/s':>9}{'PutRecords':>11}{'calls/s':>8}{'rec/call':>9}{'busy':>6}"
        f"{'receives':>9}  verified; order per device"
    )
    for run in runs:
        per_call = run.records / max(run.put_calls, 1)
        busy = f"{per_call / run.groups:.0%}" if run.queue == "FIFO" else "-"
        print(
            f"{run.queue:<9}{run.groups:>7}{run.submissions:>6}{run.events:>7}"
            f"{run.seconds:>9.1f}{run.submissions / run.busy_s:>8.0f}"
            f"{run.events / run.busy_s:>9.0f}{run.put_calls:>11}"
            f"{run.put_calls / run.busy_s:>8.1f}{per_call:>9.1f}{busy:>6}"
            f"{run.receives:>9}  {run.verified}; {run.order_verdict} "
            f"({len(run.order.out_of_order)}/{run.order.pairs} pairs out of order)"
        )
    standard = next((run for run in runs if run.queue == "standard"), None)
    for run in runs:
        if standard is not None and run.queue == "FIFO" and run.groups == standard.groups:
            ratio = (run.events / run.busy_s) / (standard.events / standard.busy_s)
            print(f"FIFO / standard events/s, {run.groups} devices: {ratio:.2f}")
    print(
        "events/s = calls/s x rec/call; on FIFO rec/call <= groups (one submission of a group "
        "publishing at a time, one record of it in flight); busy = rec/call / groups"
    )
