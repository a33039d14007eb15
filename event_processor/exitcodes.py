"""Exit codes of every command (the daemon, the tools, sensor-fleet): one table, one owner.

Shell and orchestrators read them: 3 means "fix the environment" (nothing was done), 1 means
"something failed on the way", 130 is the shell's code for a Ctrl-C.
"""

from __future__ import annotations

OK = 0
# The daemon crashed (a side task or the worker raised), or a tool's AWS call failed.
FAILED = 1
# argparse's own code for bad usage; invalid settings use it too.
USAGE = 2
# Start-up failed: a queue or stream is missing, unreachable or unfit (the DLQ's size limit).
STARTUP_FAILED = 3
# Interrupted by a second SIGINT/SIGTERM (128 + SIGINT, as a shell reports it): a tool stopped
# before it was done, or the daemon's drain cut short (its unfinished messages were released).
INTERRUPTED = 130
