"""Run a command from a small parent and write its own CPU and peak RSS: `wait4` done right.

Linux keeps a process's peak RSS across exec, and a child started by vfork/exec begins with
its parent's: a daemon that the bench process (moto and its data live in it, hundreds of MB)
starts directly reports at least the bench's RSS as its ru_maxrss. Started from this
launcher (about 10 MB), the figure is the daemon's own.

Usage: python -m devworld.bench.launch RUSAGE_JSON COMMAND [ARG...]. SIGTERM and SIGINT are passed
on to the command, SIGUSR1 kills it; the launcher exits with the command's exit status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

# The signal that asks the launcher to SIGKILL its command (a SIGKILL to the launcher
# itself would orphan the command and lose its rusage).
KILL_SIGNAL = signal.SIGUSR1
# Shell convention for "ended by signal N", used as the launcher's own exit status.
_SIGNAL_EXIT_BASE = 128


def main(argv: list[str]) -> int:
    rusage_path, command = Path(argv[0]), argv[1:]
    children: list[subprocess.Popen[bytes]] = []
    early: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not children:
            early.append(signum)  # before the command exists: passed on once it does
            return
        children[0].send_signal(signal.SIGKILL if signum == KILL_SIGNAL else signum)

    # Handlers first: a SIGTERM that came before them would end the launcher, not the command.
    for passed_on in (signal.SIGTERM, signal.SIGINT, KILL_SIGNAL):
        signal.signal(passed_on, forward)
    child = subprocess.Popen(command)  # noqa: S603 - the bench's own argv
    children.append(child)
    for pending in early:
        forward(pending, None)
    # wait4 is retried after a handled signal (PEP 475), so forwarding does not end the wait.
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = code = os.waitstatus_to_exitcode(status)
    report = {"code": code, "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss}
    rusage_path.write_text(json.dumps(report))
    return code if code >= 0 else _SIGNAL_EXIT_BASE - code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
