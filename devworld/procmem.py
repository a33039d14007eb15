"""Peak memory of a child process, for the bench and the tests (development tooling).

`wait4`'s ru_maxrss is no good here: Python starts children with vfork, and Linux keeps the
parent's resident size at that moment in the child's maxrss across exec, so a child started
by a large test process "peaks" at its parent's size. /proc/PID/status's VmHWM belongs to the
image the child runs, so it is read until the child exits.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def vm_hwm_bytes(pid: int) -> int | None:
    """The process's peak resident set since its exec, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    return None


class PeakRss:
    """Samples a child's VmHWM; `wait()` keeps sampling until it exits and returns its code."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.peak_bytes = 0

    def sample(self) -> None:
        hwm = vm_hwm_bytes(self.process.pid)
        if hwm is not None:
            self.peak_bytes = max(self.peak_bytes, hwm)

    def wait(self, timeout_s: float, interval_s: float = 0.01) -> int:
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            self.sample()  # VmHWM only grows: the last reading before exit is the peak
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.process.args, timeout_s)
            time.sleep(interval_s)  # a sampling period, not a synchronisation
        return self.process.returncode

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / (1024 * 1024)
