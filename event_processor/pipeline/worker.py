"""The worker's lifecycle: receivers, in-flight bound, heartbeat, and the graceful drain.

startup -> main loop -> shutdown, as uvicorn does it. A stop is an event, not a
cancellation: receiving stops (long polls are interrupted), in-flight submissions drain
under `asyncio.timeout(grace)`, what is unfinished is released with visibility 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from event_processor import constants
from event_processor.errors import error_code
from event_processor.retry import Backoff, RetryPolicy

if TYPE_CHECKING:
    from event_processor.metrics import Metrics
    from event_processor.pipeline.admission import Admission, Hold
    from event_processor.pipeline.sink import KinesisSink
    from event_processor.pipeline.source import Message, SqsSource
    from event_processor.pipeline.submission import Pipeline

log = logging.getLogger(__name__)


class Capacity:
    """Counting bound on in-flight submissions; receivers wait when it is used up."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._available = asyncio.Event()
        self._available.set()

    async def acquire(self, want: int) -> int:
        """Take between 1 and `want` slots, waiting until at least one is free."""
        while self._free == 0:
            self._available.clear()
            await self._available.wait()
        taken = min(want, self._free)
        self._free -= taken
        return taken

    def release(self, count: int) -> None:
        self._free += count
        if self._free > 0:
            self._available.set()


@dataclass
class DrainOutcome:
    """How the last shutdown went, for the `stopped` line and the exit code."""

    forced: bool = False  # a second signal (or cancellation) cut the drain short
    grace_expired: bool = False  # SHUTDOWN_GRACE_SECONDS ran out with work in flight
    unfinished: int = 0  # in flight when the drain ended: cancelled, to be redelivered
    released: int = 0  # of those, made visible again at once (the rest after their timeout)


class Worker:
    def __init__(
        self,
        source: SqsSource,
        sink: KinesisSink,
        pipeline: Pipeline,
        metrics: Metrics,
        policy: RetryPolicy,
        *,
        admission: Admission,
        receivers: int,
        batch_size: int,
        max_in_flight: int,
        shutdown_grace_s: float,
        side_tasks: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
    ) -> None:
        self._source = source
        self._sink = sink
        self._pipeline = pipeline
        self._metrics = metrics
        self._policy = policy
        self._receivers = receivers
        self._batch_size = batch_size
        self._capacity = Capacity(max_in_flight)
        self._admission = admission
        self._holds: dict[asyncio.Task[object], Hold] = {}
        self._grace_s = shutdown_grace_s
        self._in_flight: dict[asyncio.Task[object], Message] = {}
        # Read when scraped rather than moved twice per submission (each move takes a lock).
        metrics.in_flight_submissions.set_function(lambda: len(self._in_flight))
        self.stop = asyncio.Event()  # first SIGTERM/SIGINT: drain
        self.force = asyncio.Event()  # second signal: stop waiting for the drain
        self.running = False
        self.drained = DrainOutcome()
        self._source_ok = True
        self._receiving: set[asyncio.Task[object]] = set()  # receivers inside ReceiveMessage
        # Loops that run beside the heartbeat (the key set's refresh) and end with it.
        self._side_tasks = side_tasks

    @property
    def ready(self) -> bool:
        """For /readyz: receiving, and both SQS and Kinesis answer."""
        return self.running and not self.stop.is_set() and self._source_ok and self._sink.healthy

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self) -> None:
        """Run until stopped, then drain; re-raise what killed a side task, if anything did.

        Side tasks are plain tasks watched with asyncio.wait rather than a TaskGroup: a
        TaskGroup cancels every sibling at the first failure, and the drain still needs
        the heartbeat to keep in-flight messages invisible while they finish.
        """
        receivers = [
            asyncio.create_task(self._receive_loop(), name=f"receiver-{i}")
            for i in range(self._receivers)
        ]
        heartbeat = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        side = [asyncio.create_task(run(), name=run.__qualname__) for run in self._side_tasks]
        stop = asyncio.create_task(self.stop.wait(), name="stop")
        self.running = True
        log.info("worker started", extra={"action": "started", "receivers": self._receivers})
        cancelled = False
        try:
            done, _ = await asyncio.wait(
                [*receivers, heartbeat, *side, stop], return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            # Cancelled from outside (a TaskGroup sibling failed, an embedding app shut down):
            # the same drain and release as a stop, then the cancellation goes on.
            cancelled = True
            done = set()
            log.warning("worker cancelled, draining", extra={"action": "cancelled"})
        failure = next(
            (t.exception() for t in done if t is not stop and not t.cancelled() and t.exception()),
            None,
        )
        if failure is not None:
            log.error("side task failed, draining", extra={"action": "side_task_failed"})
        # Shielded, as procrastinate shields its shutdown: a cancellation that arrives while
        # draining skips the rest of the grace (as a second signal does) but still releases.
        shutdown = asyncio.create_task(self._shut_down(receivers, [heartbeat, *side], stop))
        while True:
            try:
                await asyncio.shield(shutdown)
                break
            except asyncio.CancelledError:
                cancelled = True
                self.force.set()
        if cancelled:
            raise asyncio.CancelledError
        if failure is not None:
            raise failure

    async def _shut_down(
        self,
        receivers: list[asyncio.Task[None]],
        side: list[asyncio.Task[None]],
        stop: asyncio.Task[bool],
    ) -> None:
        # 1. Stop receiving. Long polls waiting for messages are interrupted; a receive whose
        # answer may already be on its way gets a short window to land first.
        stop.cancel()
        self.stop.set()
        for task in receivers:
            if task not in self._receiving:
                task.cancel()
        await asyncio.wait(receivers, timeout=constants.RECEIVE_STOP_WINDOW_S)
        for task in receivers:
            task.cancel()
        await asyncio.gather(*receivers, return_exceptions=True)
        # 2. Let in-flight submissions finish within the grace period (heartbeat still on).
        await self._drain()
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        # 3. Release what is unfinished, once nothing of ours can land on the stream after it.
        await self._release_unfinished()
        self.drained.forced = self.force.is_set()
        self.running = False

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        log.info("draining", extra={"action": "draining", "in_flight": len(self._in_flight)})
        force = asyncio.create_task(self.force.wait())
        try:
            async with asyncio.timeout(self._grace_s):
                while self._in_flight and not self.force.is_set():
                    await asyncio.wait(
                        [*self._in_flight, force], return_when=asyncio.FIRST_COMPLETED
                    )
        except TimeoutError:
            self.drained.grace_expired = True
            log.warning("shutdown grace expired", extra={"action": "grace_expired"})
        finally:
            force.cancel()

    async def _release_unfinished(self) -> None:
        unfinished = list(self._in_flight.items())
        for task, _ in unfinished:
            task.cancel()  # cancels its lane too: the sink will not send its records
        await asyncio.gather(*(t for t, _ in unfinished), return_exceptions=True)
        # Requests already on the wire complete first, so that a redelivery elsewhere
        # cannot overtake a record of ours still in flight.
        await self._sink.close()
        self.drained.unfinished = len(unfinished)
        if unfinished:
            # In the order received (the dict's), batch after batch on a FIFO source: a
            # group's messages become visible again in their order.
            messages = [m for _, m in unfinished]
            released = await self._source.change_visibility(messages, 0, in_order=self._source.fifo)
            self.drained.released = len(released)
            log.info(
                "released unfinished messages",
                extra={"action": "released", "count": len(released), "asked": len(messages)},
            )

    # --- receiving -------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        backoff: Backoff | None = None
        forever = self._policy.with_limits(max_attempts=2**62, deadline_s=float("inf"))
        me = asyncio.current_task()
        assert me is not None
        while not self.stop.is_set():
            # Backpressure: no new work while Kinesis is down or the bound is reached.
            await self._sink.wait_healthy(constants.RETRY_MAX_BACKOFF_S)
            wanted = await self._capacity.acquire(self._batch_size)
            try:
                reservation = await self._admission.reserve(wanted)
            except BaseException:
                self._capacity.release(wanted)
                raise
            self._capacity.release(wanted - reservation.count)
            wanted = reservation.count
            if self.stop.is_set():
                self._capacity.release(wanted)
                self._admission.unreserve(reservation)
                return
            self._receiving.add(me)
            try:
                messages = await self._source.receive(wanted)
            except (BotoCoreError, ClientError) as exc:
                self._capacity.release(wanted)
                self._admission.unreserve(reservation)
                if self._source_ok:
                    # Logged once per state change, not once per attempt.
                    log.warning(
                        "sqs unavailable, retrying",
                        extra={"action": "source_down", "error": error_code(exc)},
                    )
                self._source_ok = False
                backoff = backoff or Backoff(forever.retrying())
                await asyncio.sleep(backoff.next_delay() or constants.RETRY_MAX_BACKOFF_S)
                continue
            except BaseException:
                self._capacity.release(wanted)
                self._admission.unreserve(reservation)
                raise
            finally:
                self._receiving.discard(me)
            if not self._source_ok:
                log.warning("sqs available again", extra={"action": "source_up"})
                self._source_ok = True
            backoff = None
            self._capacity.release(wanted - len(messages))
            holds = self._admission.admit(reservation, messages)
            for message, hold in zip(messages, holds, strict=True):
                self._start(message, hold)

    def _start(self, message: Message, hold: Hold) -> None:
        task = asyncio.create_task(self._pipeline.process(message, hold))
        self._in_flight[task] = message
        self._holds[task] = hold
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[object]) -> None:
        del self._in_flight[task]
        self._admission.finished(self._holds.pop(task))
        self._capacity.release(1)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not bad input (that is data) nor an AWS fault (handled inside).
            # The message stays in SQS; redrive moves it to the DLQ if it keeps failing.
            self._metrics.submissions.labels("error").inc()
            log.error(
                "submission crashed",
                exc_info=task.exception(),
                extra={"action": "submission_crashed"},
            )

    # --- heartbeat -------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        visibility = self._source.visibility_timeout_s
        tick = min(constants.HEARTBEAT_TICK_S, visibility / 4)
        while True:
            await asyncio.sleep(tick)  # a periodic schedule, not a synchronisation
            now = time.monotonic()
            due = [
                m
                for m in self._in_flight.values()
                if m.visible_until - now <= visibility * constants.HEARTBEAT_FRACTION
                and now - m.received_at < constants.HEARTBEAT_CAP_S
            ]
            if not due:
                continue
            # All batches at once: a sweep must finish well inside the half window it has.
            extended = await self._source.change_visibility(due, visibility)
            for message in extended:
                message.visible_until = now + visibility
                message.extensions += 1
            self._metrics.visibility_extensions.inc(len(extended))
