"""The sink's lanes: one per submission in flight, and the queue of those ready to send.

A lane holds its submission's records in body order and sends only its head; the ready queue
hands out the heads of the oldest lanes first, one per lane, within a request's limits. The
sink (sink.py) decides when a request goes and what happens to its answer.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import TYPE_CHECKING

from event_processor import constants

if TYPE_CHECKING:
    from event_processor.contract.records import Record, Records
    from event_processor.retry import Backoff


class ListedRecords:
    """A list of built records seen as `Records` (tests and tools publish lists)."""

    __slots__ = ("_records",)

    def __init__(self, records: list[Record]) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Record:
        return self._records[index]

    def size(self, index: int) -> int:
        return self._records[index].size


class Lane:
    """One submission's records; only its head is ever in flight.

    Lanes are served oldest first: `received_at` is when the submission was received (and
    `opened` breaks ties), and a lane keeps it through retries, so under a slow stream
    submissions finish one after another instead of all advancing a record per round and
    finishing together.
    """

    __slots__ = (
        "backoff",
        "count",
        "done",
        "next",
        "opened",
        "received_at",
        "records",
        "sequence_number",
        "shard_id",
        "submission_id",
    )

    def __init__(
        self,
        records: Records,
        done: asyncio.Future[None],
        received_at: float,
        opened: int,
        submission_id: str = "",
    ) -> None:
        self.records = records
        self.count = len(records)  # asked once: `left` runs once per record acknowledged
        self.next = 0  # index of the head: records before it are acknowledged
        self.done = done
        self.received_at = received_at
        self.opened = opened
        self.backoff: Backoff | None = None  # created on the first failure only
        self.submission_id = submission_id  # for the logs only
        # Where Kinesis put the last acknowledged record: its successor is checked against it.
        self.shard_id: str | None = None
        self.sequence_number = ""

    @property
    def left(self) -> int:
        return self.count - self.next


class ReadyLanes(list[tuple[float, int, "Lane"]]):
    """Lanes whose head may be sent, oldest submission first; its length is their count.

    A heap of flat (received_at, opened, lane) tuples: `opened` is unique, so the heap
    compares the tuples in C and never reaches a Lane (whose Python __lt__ would run several
    times per push or pop), and one flat tuple compares in one step, where
    ((received_at, opened), lane) takes two. The heap is the list itself, so that the sink's
    checks of its length and truth, at every send, call no Python method.
    """

    __slots__ = ("_opened",)

    def __init__(self) -> None:
        super().__init__()
        self._opened = itertools.count()  # ties between submissions received together

    def open(
        self, records: Records, done: asyncio.Future[None], received_at: float, submission_id: str
    ) -> Lane:
        """A new lane for a submission's records, ready at once."""
        lane = Lane(records, done, received_at, next(self._opened), submission_id)
        self.push(lane)
        return lane

    def push(self, lane: Lane) -> None:
        """Ready (again): a lane keeps its age, so a retried one goes before every younger
        lane (aiokafka puts a failed batch back at the head of its queue for the same reason)."""
        heapq.heappush(self, (lane.received_at, lane.opened, lane))

    def take(self, limit: int, max_bytes: int, *, first_always: bool) -> tuple[list[Lane], int]:
        """Heads of the oldest ready lanes, one per lane: at most `limit` of them and
        `max_bytes` together (`first_always`: the first one even if it alone is larger);
        (lanes, their heads' bytes). Lanes abandoned while they waited are dropped."""
        batch: list[Lane] = []
        total = 0
        ready = self
        while ready and len(batch) < limit:
            lane = ready[0][2]
            if lane.done.done():  # abandoned (shutdown) while waiting: drop it
                heapq.heappop(ready)
                continue
            size = lane.records.size(lane.next)
            if total + size > max_bytes and (batch or not first_always):
                break
            total += size
            batch.append(heapq.heappop(ready)[2])
            if total >= constants.PUT_RECORDS_MAX_BYTES:  # a full request
                break
        return batch, total

    def abandon(self) -> None:
        """Cancel every ready lane's future: the sink is closing."""
        while self:
            heapq.heappop(self)[2].done.cancel()
