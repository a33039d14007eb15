"""SIGTERM/SIGINT: the first asks for a graceful drain, the second cuts the drain short."""

from __future__ import annotations

import asyncio
import logging
import signal

log = logging.getLogger(__name__)


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

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handle, signum)


def uninstall() -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
