"""FIFO message groups: one group's submissions reach the stream one after another.

An SQS FIFO queue hands out a group's messages in order, several in one receive, and no
more of that group while any of them is in flight. The daemon would publish those as
parallel lanes; a `Turn` chains them instead, in the order they were received:

* a submission waits for its predecessor's turn before its first effect (a record, a
  dead letter, a delete), so parsing still overlaps the predecessor's publishing;
* the predecessor passes the turn on once it has nothing left to put on the stream: its
  last record acknowledged, or the whole submission rejected (a rejection does not block
  its group; its letter goes to the DLQ meanwhile);
* a predecessor that fails (left for redelivery, crashed, cancelled) breaks the turn: the
  successor is not published but released at once, and breaks its own turn in turn, so that
  SQS hands the group out again from the failed message, in order. Nothing overtakes a
  failure, as with Lambda's FIFO batch processing.

Standard queues have no groups and take no turns.
"""

from __future__ import annotations

import asyncio


class Turn:
    """One submission's place in its group: its predecessor's outcome and its own."""

    __slots__ = ("_group_id", "_groups", "_mine", "_previous")

    def __init__(
        self,
        groups: MessageGroups,
        group_id: str,
        previous: asyncio.Future[bool] | None,
        mine: asyncio.Future[bool],
    ) -> None:
        self._groups = groups
        self._group_id = group_id
        self._previous = previous
        self._mine = mine

    @property
    def clear(self) -> bool:
        """No earlier submission of the group holds this one back (none, or passed on)."""
        previous = self._previous
        return previous is None or (previous.done() and previous.result())

    async def wait(self) -> bool:
        """Until the predecessor has settled: True if this submission may go on, False if it
        failed (this one is then to be released, not published)."""
        if self._previous is None:
            return True
        # Shielded: a cancelled successor must not cancel its predecessor's future, which
        # the predecessor settles (and nobody else reads).
        return await asyncio.shield(self._previous)

    def pass_on(self) -> None:
        """Nothing of this submission is left to put on the stream: the next may go."""
        if not self._mine.done():
            self._mine.set_result(True)

    def leave(self) -> None:
        """This submission is finished, however it ended: a turn not passed on is broken
        (the successor is released), and the group forgets it."""
        if not self._mine.done():
            self._mine.set_result(False)
        self._groups.forget(self._group_id, self._mine)


class MessageGroups:
    """The last turn of every group with a submission in flight."""

    def __init__(self) -> None:
        self._last: dict[str, asyncio.Future[bool]] = {}

    def __len__(self) -> int:
        return len(self._last)

    def join(self, group_id: str) -> Turn:
        """The turn after the group's last one (received before it): call in receive order."""
        mine: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        previous = self._last.get(group_id)
        self._last[group_id] = mine
        return Turn(self, group_id, previous, mine)

    def forget(self, group_id: str, turn: asyncio.Future[bool]) -> None:
        if self._last.get(group_id) is turn:
            del self._last[group_id]
