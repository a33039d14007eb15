"""Whether Kinesis answers: what /readyz reports and what receivers wait on.

The sink's calls are the signal: consecutive whole-call failures mark the stream down, the
first answer marks it up. While it is down and no record is left to send, nothing would
find out that it came back, so the waiters probe it themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from event_processor import constants

log = logging.getLogger(__name__)


class StreamHealth:
    """Up or down, from the outcome of the sink's calls; probed when idle."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[bool]],
        *,
        unhealthy_after: int = constants.SINK_UNHEALTHY_AFTER_FAILED_CALLS,
    ) -> None:
        self._probe = probe  # one cheap call to the stream: True when it answered
        self._unhealthy_after = unhealthy_after
        self._failed_calls = 0
        self._up = asyncio.Event()
        self._up.set()

    @property
    def healthy(self) -> bool:
        """False while whole calls keep failing (Kinesis down or unreachable)."""
        return self._up.is_set()

    def call_failed(self, code: str) -> None:
        """A whole call failed with error `code`; one alone is a blip, not an outage."""
        self._failed_calls += 1
        if self._up.is_set() and self._failed_calls >= self._unhealthy_after:
            self._up.clear()
            log.warning("kinesis unavailable", extra={"action": "sink_down", "error": code})

    def call_succeeded(self) -> None:
        """A call was answered (even if some of its entries failed): the stream is up."""
        self._failed_calls = 0
        if not self._up.is_set():
            self._up.set()
            log.warning("kinesis available again", extra={"action": "sink_up"})

    async def wait(self, probe_interval_s: float, idle: Callable[[], bool]) -> None:
        """Block while the stream is down; probe it every `probe_interval_s` while `idle()`
        says no call of the sink's is left to find out."""
        while not self._up.is_set():
            if idle() and await self._probe():
                self.call_succeeded()
            if self._up.is_set():
                return
            try:
                async with asyncio.timeout(probe_interval_s):
                    await self._up.wait()
            except TimeoutError:
                continue
