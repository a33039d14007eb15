"""`make profile`: py-spy records the daemon draining the bench's backlog, then a summary.

The world is the bench's (moto behind the fault proxy, 10 ms per AWS call, the fleet backlog).
py-spy starts the daemon itself, so start-up is in the profile from the first import; the
daemon is stopped with SIGTERM once the queue is empty. The raw profile (collapsed stacks, one
`frame;frame;... count` a line, for flamegraph.pl or speedscope.app) goes under .profile/,
and the printed summary splits the samples the way issue 13 does: imports, the AWS calls
(and inside them serialize, hooks, signing, parsing, HTTP), the models, our other code.

py-spy samples wall-clock time while the daemon holds the GIL, so on a shared VM the moments
it waits for a core (often right after a write has woken the proxy: aiohttp's _writelines)
are counted too. Shares are what to compare; the CPU the daemon really used is printed from
/proc, and `make bench` measures it (wait4).

    python -m devworld.bench.profile [--submissions N] [--rate HZ] [--auth-mode enforce]
    python -m devworld.bench.profile --summarise .profile/daemon-....raw
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# Where profiles go (gitignored): one file per run, named by its UTC time.
PROFILE_DIR = Path(".profile")
# Samples per second: ~1,500 over a drain of the standard backlog; py-spy runs in a process
# of its own, and its pauses of the daemon cost it a few percent.
_DEFAULT_RATE_HZ = 200
_POLL_S = 0.05
_DRAIN_TIMEOUT_S = 600.0
_EXIT_TIMEOUT_S = 60.0
# Rows of each table in the summary.
_TOP = 20

# A sample's phase, by the frames on its stack, first match wins (see phase_of).
IMPORTS = "start-up: imports"
STARTUP = "start-up: clients, checks (app.run before the worker)"
AWS_CALL = "AWS API calls (botocore's client or the lean path)"
MODELS = "event_processor.contract: parse, records"
OURS = "event_processor (other)"
OTHER = "event loop, aiohttp, other"
NO_FRAMES = "no Python frame (interpreter start and exit)"
PHASES = (IMPORTS, STARTUP, AWS_CALL, MODELS, OURS, OTHER, NO_FRAMES)

# Inside an API call: the innermost frame of one of these files names the step.
_CALL_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("serialize", ("botocore/serialize.py", "botocore/validate.py")),
    ("sign", ("botocore/auth.py", "botocore/signers.py", "aiobotocore/signers.py")),
    ("credentials", ("botocore/credentials.py", "aiobotocore/credentials.py")),
    ("parse", ("botocore/parsers.py", "aiobotocore/parsers.py")),
    ("retry classification", ("botocore/retries/", "aiobotocore/retries/")),
    ("endpoint resolution", ("botocore/regions.py", "aiobotocore/regions.py")),
    ("hooks", ("botocore/hooks.py", "aiobotocore/hooks.py", "botocore/handlers.py")),
    ("http", ("aiohttp/", "aiobotocore/httpsession.py", "aiobotocore/_endpoint_helpers.py")),
    ("request/response", ("botocore/awsrequest.py", "aiobotocore/endpoint.py")),
    ("model", ("botocore/model.py",)),
)
# The frames that mark an API call under way: aiobotocore's client, or our own request path.
_CALL_MARKERS = ("_make_api_call (aiobotocore/client.py", "event_processor/aws/lean.py")
# Frames every sample of the daemon's main thread has (the entry and the event loop's run):
# they say nothing about where the time goes.
_ENTRY_FILES = ("event_processor/__main__.py", "event_processor/cli.py")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


@dataclass
class Summary:
    """Sample counts of one profile, by phase, by step of an API call, by leaf frame/module."""

    samples: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    call_steps: Counter[str] = field(default_factory=Counter)
    leaf_functions: Counter[str] = field(default_factory=Counter)
    leaf_modules: Counter[str] = field(default_factory=Counter)
    inclusive_modules: Counter[str] = field(default_factory=Counter)


def _split(frame: str) -> tuple[str, str]:
    """(function, file) of a py-spy frame such as `emit (botocore/hooks.py:239)`."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    return match["function"], match["file"]


def module_of(path: str) -> str:
    """A dotted module name for a py-spy file: `botocore/hooks.py` -> `botocore.hooks`."""
    if path.startswith("<frozen "):
        return path[len("<frozen ") : -1]
    # site-packages prefixes are already stripped by py-spy; the stdlib keeps its path.
    name = path.removesuffix(".py").removesuffix("/__init__")
    name = re.sub(r"^.*/lib/python3\.\d+/(site-packages/)?", "", name)
    return name.replace("/", ".")


def phase_of(frames: list[str]) -> str:
    """The phase of one stack (root first). Imports win, then start-up's own work (the main
    task in app.run before it runs the worker), then an API call, then the models, then any
    frame of ours; what is left is the loop, aiohttp's protocol and the rest."""
    frames = [f for f in frames if not any(entry in f for entry in _ENTRY_FILES)]
    if any("importlib._bootstrap" in f for f in frames):
        return IMPORTS
    if any("(event_processor/app.py" in f for f in frames) and not any(
        "(event_processor/pipeline/worker.py" in f for f in frames
    ):
        return STARTUP
    if any(marker in f for f in frames for marker in _CALL_MARKERS):
        return AWS_CALL
    if any(
        f"event_processor/contract/{module}.py" in f
        for f in frames
        for module in ("parse", "records")
    ):
        return MODELS
    if any("event_processor/" in f for f in frames):
        return OURS
    return OTHER


def call_step_of(frames: list[str]) -> str:
    """Inside an API call, the step: the innermost frame that belongs to one of _CALL_STEPS."""
    for frame in reversed(frames):
        for step, files in _CALL_STEPS:
            if any(name in frame for name in files):
                return step
    return "client (other)"


def summarise(lines: Iterable[str]) -> Summary:
    """Fold py-spy's raw output (`frame;frame;... count` per line, root first)."""
    summary = Summary()
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        # With --threads or --subprocesses py-spy puts process and thread names first.
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        summary.samples += count
        if not frames:
            summary.phases[NO_FRAMES] += count
            continue
        phase = phase_of(frames)
        summary.phases[phase] += count
        if phase == AWS_CALL:
            summary.call_steps[call_step_of(frames)] += count
        function, path = _split(frames[-1])
        summary.leaf_functions[f"{function} ({path})"] += count
        summary.leaf_modules[module_of(path)] += count
        for module in {module_of(_split(f)[1]) for f in frames}:
            summary.inclusive_modules[module] += count
    return summary


def _share(count: int, total: int) -> str:
    return f"{count / total:6.1%}" if total else "     -"


def report(summary: Summary, seconds_per_sample: float) -> str:
    """The summary as text: phases, API-call steps, top frames and modules."""
    total = summary.samples
    out = [
        f"{total} samples (~{total * seconds_per_sample:.2f} s on CPU at the sampling rate)",
        "",
        "by phase (first match: imports, start-up, API call, models, our other code, the rest):",
    ]
    out += [f"  {_share(summary.phases[p], total)}  {summary.phases[p]:>7}  {p}" for p in PHASES]
    calls = sum(summary.call_steps.values())
    out += ["", "inside AWS API calls (innermost step on the stack), share of all samples:"]
    out += [f"  {_share(n, total)}  {n:>7}  {step}" for step, n in summary.call_steps.most_common()]
    out += [f"  {_share(calls, total)}  {calls:>7}  (all API calls)"]
    for title, counter in (
        ("top frames by self time", summary.leaf_functions),
        ("top modules by self time", summary.leaf_modules),
        ("top modules by inclusive time", summary.inclusive_modules),
    ):
        out += ["", f"{title}:"]
        out += [f"  {_share(n, total)}  {n:>7}  {name}" for name, n in counter.most_common(_TOP)]
    return "\n".join(out)


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (py-spy starts the daemon as its child)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The fields after the parenthesised command: state, then the parent's pid.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def record(args: argparse.Namespace) -> Path:
    """Drain the backlog under py-spy; the raw profile's path."""
    # Imported here: --summarise needs neither moto nor the daemon's packages.
    from devworld.bench.daemon import compile_daemon, daemon_env  # noqa: PLC0415
    from devworld.bench.workloads import BenchKeys, fleet_backlog, load  # noqa: PLC0415
    from devworld.emulator import Emulator, queue_depth  # noqa: PLC0415
    from devworld.faultproxy import FaultProxy  # noqa: PLC0415

    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is missing: pip install py-spy (it is in the dev extra)")
    PROFILE_DIR.mkdir(exist_ok=True)
    out = PROFILE_DIR / (f"daemon-{args.auth_mode}-{datetime.now(UTC):%Y%m%dT%H%M%S}.{args.format}")
    compile_daemon()
    # Signed as make bench's backlog is, whatever the mode: the modes' profiles then compare.
    submissions = fleet_backlog(args.submissions, args.seed)
    bodies = [body for _, body in submissions]
    keys = BenchKeys.new()
    with (
        tempfile.TemporaryDirectory(prefix="profile-keys-") as key_dir,
        Emulator() as emulator,
        FaultProxy(emulator.endpoint_url) as proxy,
    ):
        proxy.latency_s = args.latency_ms / 1000
        world = emulator.create_world(
            queue_name="profile", dlq_name="profile-dlq", stream_name="profile"
        )
        load(emulator, world, bodies, keys.sign(submissions))
        auth = {"AUTH_MODE": args.auth_mode}
        if args.auth_mode != "off":
            auth["AUTH_KEYS_FILE"] = str(keys.write(Path(key_dir)))
        env = daemon_env(emulator, world, proxy.endpoint_url, **auth)
        argv = [
            py_spy,
            "record",
            "--rate",
            str(args.rate),
            "--format",
            args.format,
            "--output",
            str(out),
            # Only the thread holding the GIL: threads blocked in a queue or the loop waiting
            # in epoll are not always seen as idle, and C code that drops the GIL is not ours.
            *(["--gil"] if args.gil else []),
            "--",
            sys.executable,
            "-m",
            "event_processor",
            "run",
        ]
        print(f"profiling the daemon draining {len(bodies)} submissions into {out}", flush=True)
        sqs = emulator.boto3_client("sqs")
        began = time.monotonic()
        spy = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)  # noqa: S603
        ready = _wait_ready(int(env["METRICS_PORT"]), spy)
        while queue_depth(sqs, world.queue_url) > 0:
            if spy.poll() is not None:
                raise SystemExit(f"py-spy or the daemon exited early ({spy.returncode})")
            if time.monotonic() - began > _DRAIN_TIMEOUT_S:
                break
            time.sleep(_POLL_S)
        drained = time.monotonic() - began
        children = _children(spy.pid)
        cpu_s = sum(_cpu_s(child) for child in children)
        for child in children:
            os.kill(child, signal.SIGTERM)  # the daemon's own shutdown; py-spy then writes
        spy.wait(_EXIT_TIMEOUT_S)
    print(
        f"ready after {ready:.2f} s, drained after {drained:.2f} s (wall clock, under py-spy); "
        f"the daemon's CPU when drained: {cpu_s:.2f} s"
    )
    return out


def _cpu_s(pid: int) -> float:
    """utime + stime of a running process, from /proc/PID/stat (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the command: state is field 3 of stat(5), utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(metrics_port: int, spy: subprocess.Popen[bytes]) -> float:
    """Seconds until the daemon's /readyz answered 200."""
    began = time.monotonic()
    url = f"http://127.0.0.1:{metrics_port}/readyz"
    while spy.poll() is None and time.monotonic() - began < _DRAIN_TIMEOUT_S:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(_POLL_S)
    return time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(prog="profile", description=__doc__)
    parser.add_argument("--submissions", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rate", type=int, default=_DEFAULT_RATE_HZ, help="samples per second")
    parser.add_argument(
        "--auth-mode",
        choices=("off", "enforce"),
        default="off",
        help="the daemon's AUTH_MODE (enforce reads the bench's key set from a file)",
    )
    parser.add_argument(
        "--format",
        choices=("raw", "speedscope"),
        default="raw",
        help="raw (collapsed stacks) is summarised here; speedscope only written",
    )
    parser.add_argument(
        "--all-threads",
        dest="gil",
        action="store_false",
        help="sample every non-idle thread, not only the one holding the GIL",
    )
    parser.add_argument("--summarise", type=Path, help="summarise this raw profile, record none")
    args = parser.parse_args()
    path = args.summarise or record(args)
    if path.suffix == ".speedscope":
        print(f"wrote {path}: open it in https://www.speedscope.app")
        return 0
    with path.open() as lines:
        print(report(summarise(lines), 1 / args.rate))
    print(f"\nprofile: {path} (flamegraph.pl, or speedscope.app, reads it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
