"""SIGTERM/SIGINT, for every command: the first asks for a graceful stop, the second cuts it short.

The daemon's event loop takes them with `install`; the synchronous tools and sensor-fleet with
`stop_on_signals`. Both follow the same rule, so an operator's second Ctrl-C means the same
everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install(stop: asyncio.Event, force: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        name = signal.Signals(signum).name
        if not stop.is_set():
            log.info("stop requested", extra={"action": "stop", "signal": name})
            stop.set()
        else:
            log.warning(
                "second signal, skipping the drain", extra={"action": "force", "signal": name}
            )
            force.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, handle, signum)


def uninstall() -> None:
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.remove_signal_handler(signum)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """The first signal sets `stop` (finish the step and end); a second raises KeyboardInterrupt."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
