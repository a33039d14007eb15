"""The daemon as the bench runs it: `python -m event_processor run`, configured by environment.

Only the CLI, its environment variables, its /readyz probe and the OS are used (exit code, CPU
and peak RSS from wait4, via bench.launch), so the same helpers measure any daemon version.
"""

from __future__ import annotations

import compileall
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Self

import event_processor
from devworld.bench.launch import KILL_SIGNAL
from devworld.emulator import Emulator, World, free_port

# How often a stop looks whether the process has exited, and a wait for /readyz asks.
_EXIT_POLL_S = 0.02
_READY_POLL_S = 0.05
# How long stop() first waits for /readyz: a SIGTERM before the daemon's handlers exist
# kills it outright instead of exercising its shutdown.
_READY_BEFORE_STOP_S = 60.0
# The end of the daemon's log shown when it ends badly.
_LOG_TAIL_LINES = 5
_LOG_TAIL_BYTES = 8192


@dataclass(frozen=True)
class Exit:
    """How a process ended, from wait4 in its launcher."""

    code: int
    cpu_s: float
    peak_rss_mb: float
    # Seconds from the stop signal to the exit; 0 when it was not stopped by us.
    stop_s: float = 0.0
    killed: bool = False
    # The last lines of its stderr, for a report of a bad exit.
    log_tail: str = ""


def daemon_env(emulator: Emulator, world: World, proxy_url: str, **settings: str) -> dict[str, str]:
    """The environment of one daemon on `world`, its AWS calls through the proxy at proxy_url."""
    return {
        **os.environ,
        **emulator.client_env(),
        "AWS_ENDPOINT_URL": proxy_url,
        "QUEUE_URL": world.queue_url,
        "DLQ_URL": world.dlq_url,
        "STREAM_NAME": world.stream_name,
        # As shipped, metrics server included; on a free port, not 9100.
        "METRICS_PORT": str(free_port()),
        "METRICS_HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        **settings,
    }


def compile_daemon() -> None:
    """Byte-compile the daemon's package, as pip does when it installs it (the image does).

    An editable install (make install) leaves event_processor to be compiled when imported,
    and under PYTHONDONTWRITEBYTECODE (set in the image, and in many CI shells) every start
    compiles it again: ~50 ms of CPU, ~3 us per event of the standard backlog, that a
    deployed daemon never pays. The package compiled is the one this process imports.
    """
    compileall.compile_dir(Path(event_processor.__file__).parent, quiet=1)


class Process:
    """A command started through bench.launch; reaped with wait4, never with Popen.poll."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bench-process-")
        self._rusage = Path(self._dir.name) / "rusage.json"
        self._log_path = Path(self._dir.name) / "stderr.log"
        launcher = [sys.executable, "-m", "devworld.bench.launch", str(self._rusage), *argv]
        # stderr goes to a file: a hostile backlog can make the daemon log a line per event.
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own commands
                launcher, env=env, stdout=subprocess.DEVNULL, stderr=log
            )
        self.started = time.monotonic()
        self._exit: Exit | None = None

    def poll(self) -> Exit | None:
        """The exit if the process has ended (reaping it), else None."""
        if self._exit is None:
            pid, status, _ = os.wait4(self._process.pid, os.WNOHANG)
            if pid:
                self._reaped(status)
        return self._exit

    def _reaped(self, status: int, stop_s: float = 0.0, killed: bool = False) -> None:
        self._process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap it
        try:
            report = json.loads(self._rusage.read_text())
        except (OSError, ValueError):
            # The launcher itself died: no figures, only its status.
            report = {"code": self._process.returncode, "cpu_s": 0.0, "maxrss_kib": 0}
        # Only the end: the log can be large.
        with self._log_path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            lines = log.read().decode(errors="replace").splitlines()
        self._exit = Exit(
            code=int(report["code"]),
            cpu_s=float(report["cpu_s"]),
            peak_rss_mb=int(report["maxrss_kib"]) / 1024,  # KiB on Linux
            stop_s=stop_s,
            killed=killed,
            log_tail="\n".join(lines[-_LOG_TAIL_LINES:]),
        )
        self._dir.cleanup()

    def before_stop(self) -> None:
        """Hook: what to wait for before a SIGTERM makes sense."""

    def stop(self, timeout_s: float) -> Exit:
        """SIGTERM, wait up to timeout_s for the exit, then SIGKILL; how it ended."""
        if self.poll() is None:
            self.before_stop()
            signalled = time.monotonic()
            self._process.send_signal(signal.SIGTERM)
            deadline = signalled + timeout_s
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(_EXIT_POLL_S)
            if self._exit is None:
                self._process.send_signal(KILL_SIGNAL)  # the launcher kills it and reports
                _, status, _ = os.wait4(self._process.pid, 0)
                self._reaped(status, time.monotonic() - signalled, killed=True)
            else:
                self._exit = replace(self._exit, stop_s=time.monotonic() - signalled)
        assert self._exit is not None
        return self._exit

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # On an error in the bench, do not leave a daemon running.
        if self.poll() is None:
            self.stop(timeout_s=5.0)


class Daemon(Process):
    """`python -m event_processor run` with `env` (see daemon_env)."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__([sys.executable, "-m", "event_processor", "run"], env)
        self._readyz = f"http://127.0.0.1:{env['METRICS_PORT']}/readyz"
        self.ready_s: float | None = None

    def wait_ready(self, timeout_s: float) -> float | None:
        """Seconds from start until /readyz answered 200, or None (exited, or timed out)."""
        deadline = time.monotonic() + timeout_s
        while self.ready_s is None and self.poll() is None and time.monotonic() < deadline:
            try:
                # Our own loopback probe URL, built from the port we chose.
                with urllib.request.urlopen(self._readyz, timeout=1) as response:  # noqa: S310
                    if response.status == 200:
                        self.ready_s = time.monotonic() - self.started
            except OSError:
                time.sleep(_READY_POLL_S)
        return self.ready_s

    def before_stop(self) -> None:
        self.wait_ready(_READY_BEFORE_STOP_S)
