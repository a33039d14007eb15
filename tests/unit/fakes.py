"""Fakes of the source, sink and DLQ for the pipeline's and worker's unit tests (only unit
tests fake: integration tests run our real clients against the emulator).

Each fake has the face the pipeline and worker use and records what it was asked, in one
`calls` list shared by all three, so that a test can check the order of the steps.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
from prometheus_client import CollectorRegistry

from event_processor.auth.authenticator import Authenticator, KeyStore
from event_processor.config import AuthMode
from event_processor.contract.letters import DeadLetter
from event_processor.contract.records import PartitionKey
from event_processor.metrics import Metrics
from event_processor.pipeline.admission import Admission, MemoryBudget
from event_processor.pipeline.submission import Pipeline
from event_processor.pipeline.worker import Worker
from event_processor.retry import RetryPolicy
from event_processor.status import RejectionTally
from tests.factories import received_message

if TYPE_CHECKING:
    from event_processor.auth.keyset import KeySet
    from event_processor.contract.records import Records
    from event_processor.pipeline.source import Message

# Large enough that no test waits for room unless it means to.
BUDGET_BYTES = 64 * 1024 * 1024
# The queue's MaximumMessageSize as the worker reserves it per message.
MAX_MESSAGE_BYTES = 256 * 1024


class FakeSource:
    """SqsSource: an in-memory queue whose receives wait like long polls (until messages
    arrive or they are cancelled); deletes and visibility changes are recorded."""

    def __init__(self, calls: list[str], visibility_timeout_s: int = 30) -> None:
        self.calls = calls
        self.visibility_timeout_s = visibility_timeout_s
        self.fifo = False
        self.queue: list[Message] = []
        self.receives = 0  # ReceiveMessage calls made
        self.polls_cancelled = 0  # long polls cut off while waiting
        self.polling = asyncio.Event()  # set while a receive waits on an empty queue
        self.deleted: list[Message] = []
        self.visibility: list[tuple[list[Message], int]] = []
        self.receive_error: BaseException | None = None
        self._arrived = asyncio.Event()

    def send(self, *bodies: str) -> list[Message]:
        """Put messages with these bodies in the queue, as received now; wake a waiting poll."""
        now = time.monotonic()
        messages = [
            received_message(body, received_at=now, visible_until=now + self.visibility_timeout_s)
            for body in bodies
        ]
        self.queue.extend(messages)
        self._arrived.set()
        return messages

    def send_later(self, delay_s: float, *bodies: str) -> None:
        """Messages that reach a long poll `delay_s` from now: an answer's network latency."""
        asyncio.get_running_loop().call_later(delay_s, self.send, *bodies)

    def fail_receives(self, error: BaseException) -> None:
        """From now on receives raise `error`, a waiting long poll included."""
        self.receive_error = error
        self._arrived.set()

    async def receive(self, max_messages: int) -> list[Message]:
        self.receives += 1
        self.calls.append("receive")
        if self.receive_error is not None:
            raise self.receive_error
        while not self.queue:
            self._arrived.clear()
            self.polling.set()
            try:
                await self._arrived.wait()
            except asyncio.CancelledError:
                self.polls_cancelled += 1
                raise
            finally:
                self.polling.clear()
            if self.receive_error is not None:
                raise self.receive_error
        taken, self.queue = self.queue[:max_messages], self.queue[max_messages:]
        return taken

    async def delete(self, message: Message) -> None:
        self.calls.append("delete")
        self.deleted.append(message)

    async def change_visibility(
        self, messages: list[Message], timeout_s: int, *, in_order: bool = False
    ) -> list[Message]:
        self.calls.append(f"visibility {timeout_s}")
        self.visibility.append((list(messages), timeout_s))
        return list(messages)


@dataclass
class Lane:
    """One publish: a submission's records, and the future the sink resolves."""

    submission_id: str
    sequences: list[int]
    received_at: float | None
    future: asyncio.Future[None]


class FakeSink:
    """KinesisSink: every publish is a lane whose future the test settles, or which settles at
    once (acknowledged, or failed with `fail_with`) unless `hold_lanes` is set."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.lanes: list[Lane] = []
        self.hold_lanes = False
        self.fail_with: BaseException | None = None
        self.healthy = True
        self.closed = False

    def publish(
        self, records: Records, received_at: float | None = None, submission_id: str = ""
    ) -> asyncio.Future[None]:
        self.calls.append("publish")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        built = [records[i] for i in range(len(records))]
        if built and not submission_id:  # tests that publish directly name no submission
            submission_id = str(orjson.loads(built[0].data)["submission_id"])
        self.lanes.append(Lane(submission_id, [r.sequence for r in built], received_at, future))
        if not self.hold_lanes:
            if self.fail_with is not None:
                future.set_exception(self.fail_with)
            else:
                future.set_result(None)
        return future

    def lane(self, submission_id: str) -> Lane:
        [lane] = [lane for lane in self.lanes if lane.submission_id == submission_id]
        return lane

    async def wait_healthy(self, probe_interval_s: float) -> None:
        return

    async def close(self) -> None:
        self.calls.append("sink.close")
        self.closed = True


class FakeDlq:
    """DeadLetterQueue: sends are recorded, held by `gate` or failed."""

    max_message_bytes = MAX_MESSAGE_BYTES

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.sent: list[DeadLetter] = []
        self.gate: asyncio.Event | None = None
        self.fail_with: BaseException | None = None

    async def send(self, letters: list[DeadLetter], received_at: float | None = None) -> None:
        if not letters:
            return
        self.calls.append("dlq.send")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.extend(letters)


class FakeKeySource:
    """KeySource: answers from a script, a KeySet or an exception to raise (the last answer
    repeats); reads wait for `gate` when it is given."""

    name = "scripted"

    def __init__(self, *answers: KeySet | BaseException) -> None:
        self.answers = list(answers)
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def read(self) -> KeySet:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


@dataclass
class Fakes:
    """The fakes, a fresh metrics registry and a memory budget, as app.run would wire them."""

    calls: list[str] = field(default_factory=list)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    budget_bytes: int = BUDGET_BYTES

    def __post_init__(self) -> None:
        self.source = FakeSource(self.calls)
        self.sink = FakeSink(self.calls)
        self.dlq = FakeDlq(self.calls)
        # No cgroup read: the limit gauge is not under test here.
        self.metrics = Metrics(self.registry, memory_limit_bytes=None)
        self.budget = MemoryBudget(self.budget_bytes, self.metrics.budget_used_bytes)
        self.admission = Admission(
            self.budget, MAX_MESSAGE_BYTES, self.metrics.budget_reserved_bytes
        )

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def pipeline(
        self,
        partition_key: PartitionKey = PartitionKey.DEVICE_ID,
        auth: Authenticator | None = None,
        rejections: RejectionTally | None = None,
    ) -> Pipeline:
        return Pipeline(
            self.source,  # type: ignore[arg-type]
            self.sink,  # type: ignore[arg-type]
            self.dlq,  # type: ignore[arg-type]
            self.metrics,
            admission=self.admission,
            partition_key=partition_key,
            auth=auth,
            rejections=rejections,
        )

    async def authenticator(self, mode: AuthMode, keys: KeySet) -> Authenticator:
        """An authenticator in `mode` whose key store has read `keys`."""
        store = KeyStore(
            FakeKeySource(keys), self.metrics, RetryPolicy(initial_s=0.0), refresh_s=300
        )
        assert await store.load(asyncio.Event())
        return Authenticator(mode, store, self.metrics)

    def worker(
        self,
        *,
        shutdown_grace_s: float = 10.0,
        receivers: int = 1,
        batch_size: int = 10,
        max_in_flight: int = 100,
    ) -> Worker:
        return Worker(
            self.source,  # type: ignore[arg-type]
            self.sink,  # type: ignore[arg-type]
            self.pipeline(),
            self.metrics,
            RetryPolicy(initial_s=0.0, max_backoff_s=0.0),
            admission=self.admission,
            receivers=receivers,
            batch_size=batch_size,
            max_in_flight=max_in_flight,
            shutdown_grace_s=shutdown_grace_s,
        )
