"""Reading a queue without consuming it (a peek that pages through and then releases), and the
receive and the release both DLQ tools make.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from event_processor import constants
from event_processor.tools.dead_letters import Letter
from event_processor.tools.fifo import is_fifo as is_fifo_url

# Receives with VisibilityTimeout=0 may hand out the same oldest messages every time (moto and
# LocalStack do; SQS may too): a peek that hid nothing would not get past the first ten (issue
# 11, item 6). A peek therefore hides each page it receives, so that the next receive gets the
# next one, and releases everything it read when it ends. The release ends the hold early, so
# the hold only has to outlast the scan; it matters on its own only if the tool dies before
# releasing (SIGKILL, lost network): the messages read then stay hidden this long, which the
# daemon (it never receives from its DLQ) does not notice, only another tool's view. 10
# minutes: well above a receive stuck in botocore's retries (3 attempts of a 5 s connect and a
# 30 s read timeout, `aws.client`), so no page's hold runs out mid-scan in practice. If one
# does (a huge --limit on a slow link), its messages come back to a later receive, which hides
# them again: known by MessageId, they are not counted twice, and only their newest receipt
# handle is kept for the release.
PEEK_HOLD_S = 10 * 60
# Long poll of a peek receive. A short poll (0 s) asks only some of SQS's servers and may come
# back empty while messages are visible; an empty long poll means nothing visible is left.
PEEK_WAIT_S = 1
# A scan also stops after this many receives in a row brought only messages already read: holds
# running out faster than the scan gets past them. The scan is then not `complete`.
PEEK_IDLE_RECEIVES = 5
# The start boundary (docs/operations.md, "What a run covers"): SQS gives no snapshot of a queue,
# so a letter counts as there at the start when its SentTimestamp (SQS's clock) is at most the
# start plus a margin. The start is read from the Date header of SQS's own response, so the
# host's clock plays no part: the header is whole seconds (up to 1 s early), and SQS's hosts
# agree to well under a second, hence 2 s. Only without that header is the host's clock used,
# with a margin for a host that is off by up to a minute. A margin errs late on purpose: a
# letter that arrives just after the start is then treated as older and read (a redrive moves
# it once), while one too early would leave a letter that was there unread.
START_MARGIN_MS = 2_000
HOST_CLOCK_MARGIN_MS = 60_000
# FIFO queues: held messages released at once to read past them, at most this many, so that
# the receive after the release has room for at least one message behind them (`Groups`).
FIFO_RELEASE_BUDGET = constants.SQS_MAX_BATCH_ENTRIES - 1
# ... and a group whose release brought nothing the scan was after this many times in a row,
# each time in a full receive that may have cut it short, is not released again.
FIFO_RELEASE_TRIES = 3


@dataclass(frozen=True)
class Start:
    """What a queue held when a tool started: the time bound and SQS's approximate counts."""

    sent_by_ms: int  # letters whose SentTimestamp is at most this were there at the start
    approximate_visible: int
    approximate_not_visible: int

    def holds(self, letter: Letter) -> bool:
        """Whether `letter` was in the queue at the start (no timestamp: assumed so)."""
        sent = letter.system.get("SentTimestamp")
        return sent is None or not sent.isdigit() or int(sent) <= self.sent_by_ms


def start_of(sqs: Any, queue_url: str, *, clock: Callable[[], float] = time.time) -> Start:
    """The queue's Start, from one GetQueueAttributes: its counts and SQS's clock (`clock`,
    the host's, only if the response has no Date header)."""
    response = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attributes = response["Attributes"]
    return Start(
        _server_ms(response, clock),
        int(attributes.get("ApproximateNumberOfMessages", 0)),
        int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
    )


def _server_ms(response: Mapping[str, Any], clock: Callable[[], float]) -> int:
    """The start bound in milliseconds: SQS's Date header plus START_MARGIN_MS, else the host's."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        try:
            return int(parsedate_to_datetime(date).timestamp() * 1000) + START_MARGIN_MS
        except (TypeError, ValueError):
            pass  # unparsable: the host's clock below
    return int(clock() * 1000) + HOST_CLOCK_MARGIN_MS


def receive(
    sqs: Any, queue_url: str, *, count: int, visibility_s: int, wait_s: int
) -> list[dict[str, Any]]:
    response = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=count,
        VisibilityTimeout=visibility_s,
        WaitTimeSeconds=wait_s,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    return list(response.get("Messages", []))


def visible_count(sqs: Any, queue_url: str) -> int:
    """SQS's ApproximateNumberOfMessages: messages visible, neither held nor delayed."""
    response = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    return int(response["Attributes"].get("ApproximateNumberOfMessages", 0))


class Groups:
    """Reading past held messages of a FIFO queue.

    SQS returns no message of a FIFO message group while an earlier one of it is held
    (received, not deleted): a scan that holds what it read, or what it does not move, hides
    the rest of each such group from its own later receives. When a receive comes back empty
    while SQS still counts visible messages, those are behind held ones: `start_round` queues
    the groups of held messages, and `next_release` hands out their held messages, a few groups
    at a time (at most FIFO_RELEASE_BUDGET messages, so that a receive has room for one more),
    to be made visible again; the next receive brings them back, read already (`received`
    counts them as requeued) and the ones behind them. A group whose release brings nothing new
    in a receive with room to spare is not released again in the scan (`exhausted`), unless
    new messages of it come later; one
    whose release brings a whole receive of messages read already is `stuck`: a receive returns
    at most 10 messages, all from the head of the group, so what lies behind 10 held messages
    of a group cannot be read without deleting some of them. Does nothing on a standard queue.
    """

    def __init__(self, fifo: bool) -> None:
        self.fifo = fifo
        self.group_of: dict[str, str] = {}  # message id -> MessageGroupId, of every one received
        self.pinned: set[str] = set()  # groups never released (redrive: a move of one failed)
        self.exhausted: set[str] = set()  # released without anything new coming back
        self.stuck: set[str] = set()  # released, and a whole receive came back read already
        self.rounds = 0
        self.round_new = 0  # messages the scan was after, received since the round started
        self._round: list[str] = []  # groups still to release in this round
        self._released: set[str] = set()  # message ids released, not received again yet
        self._tries: dict[str, int] = {}  # releases of a group in a row that gained nothing

    def received(self, letters: Sequence[Letter], progress: Collection[str]) -> int:
        """Note a receive's letters; `progress`: the message ids among them that the scan was
        after (new, and from before its start: later ones hide nothing it needs). Return how
        many were released by this scan and came back."""
        if not self.fifo:
            return 0
        gained: set[str] = set()
        requeued: dict[str, int] = {}
        for letter in letters:
            group = letter.group_id or ""
            self.group_of[letter.message_id] = group
            if letter.message_id in self._released:
                self._released.discard(letter.message_id)
                requeued[group] = requeued.get(group, 0) + 1
            if letter.message_id in progress:
                gained.add(group)
                self.round_new += 1
        self.exhausted -= gained
        for group in gained:
            self._tries.pop(group, None)
        # A full receive may have been cut short of a group's next message: only a receive
        # with room to spare says that nothing is behind a group's released messages, and a
        # group cut short again and again (FIFO_RELEASE_TRIES) is given up.
        full = len(letters) >= constants.SQS_MAX_BATCH_ENTRIES
        for group, count in requeued.items():
            if count >= constants.SQS_MAX_BATCH_ENTRIES:
                self.stuck.add(group)
            elif group not in gained:
                self._tries[group] = self._tries.get(group, 0) + 1
                if not full or self._tries[group] >= FIFO_RELEASE_TRIES:
                    self.exhausted.add(group)
        return sum(requeued.values())

    def start_round(self, held: Mapping[str, str], only: Collection[str] | None = None) -> bool:
        """Queue for release every group of a held message (of `only`, if given) that may hide
        more: not pinned, stuck or exhausted. False if there is none."""
        if not self.fifo:
            return False
        skip = self.pinned | self.stuck | self.exhausted
        groups = dict.fromkeys(
            g
            for m in held
            if (g := self.group_of.get(m)) is not None
            and g not in skip
            and (only is None or g in only)
        )
        self._round = list(groups)
        self.rounds += 1
        self.round_new = 0
        return bool(self._round)

    @property
    def releasing(self) -> bool:
        """Whether groups of the round are still to be released."""
        return bool(self._round)

    def next_release(self, held: dict[str, str]) -> dict[str, str]:
        """The held messages (message id -> receipt handle) to make visible before the next
        receive, taken out of `held`: those of the round's next groups, within the budget."""
        chosen: dict[str, str] = {}
        while self._round:
            group = self._round[0]
            ids = [m for m in held if self.group_of.get(m) == group]
            if chosen and len(chosen) + len(ids) > FIFO_RELEASE_BUDGET:
                break
            self._round.pop(0)
            for message_id in ids:
                chosen[message_id] = held.pop(message_id)
            self._released.update(ids)
        return chosen


def error_text(error: Mapping[str, Any]) -> str:
    """A batch entry's failure (or an error response) as `Code: Message`."""
    return f"{error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": ")


def release(sqs: Any, queue_url: str, held: Mapping[str, str], err: TextIO) -> int:
    """Make held messages (message id -> receipt handle) visible again; return how many were not.

    ChangeMessageVisibilityBatch takes 10 entries a call and reports each entry, so every
    `Failed` entry is checked. Failures are warned about, not raised: this runs on the way out
    of errors and Ctrl-C too, and SQS shows such a message again when its hold runs out anyway.
    """
    handles = list(held.items())
    not_released = 0
    for chunk in chunks(handles, constants.SQS_MAX_BATCH_ENTRIES):
        entries = [
            {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
            for i, (_, handle) in enumerate(chunk)
        ]
        try:
            response = sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            not_released += len(entries)
            print(
                f"warning: could not release {len(entries)} messages ({exc}); SQS shows them"
                " again when their hold runs out",
                file=err,
            )
            continue
        for entry in response.get("Failed", []):
            not_released += 1
            message_id = chunk[int(entry["Id"])][0]
            print(
                f"warning: could not release {message_id} ({error_text(entry)}); SQS shows"
                " it again when its hold runs out",
                file=err,
            )
    return not_released


class Peek:
    """One scan of a queue: iterate it for the distinct messages, oldest pages first.

    Made by `peek`, which releases what it read when the `with` block ends. The caller stops
    early by not asking for more (everything received, also the rest of a page, is held and
    released all the same). Afterwards `complete` says whether the scan reached the end.
    """

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        *,
        hold_s: int,
        wait_s: int,
        idle_receives: int,
        stop: threading.Event | None,
        start: Start | None = None,
        err: TextIO | None = None,
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._hold_s = hold_s
        self._wait_s = wait_s
        self._idle = Idle(idle_receives)
        self._stop = stop
        self.start = start
        self._err = err
        # Message id -> newest receipt handle of every message received: all are released.
        self.held: dict[str, str] = {}
        self.seen: set[str] = set()  # message ids of every message received
        self.groups = Groups(is_fifo_url(queue_url))
        self.complete = False  # the scan read every message there (from the start) to read
        self.interrupted = False  # `stop` was set before the scan was done
        self.not_released = 0  # messages the release failed for (after the `with` block)
        self.arrived = 0  # messages sent after the start: held, released, never yielded
        self.fresh = 0  # messages yielded
        # FIFO: messages still visible when the scan ended, behind the first 10 of their group
        # (a scan that deletes nothing cannot read past those: `Groups`).
        self.unreachable = 0

    def __iter__(self) -> Iterator[Letter]:
        while not self._idle.done:
            if self._stop is not None and self._stop.is_set():
                self.interrupted = True
                return
            released = self.groups.next_release(self.held) if self.groups.releasing else {}
            if released:
                self.not_released += release(self._sqs, self._queue_url, released, self._out)
            batch = receive(
                self._sqs,
                self._queue_url,
                count=constants.SQS_MAX_BATCH_ENTRIES,
                visibility_s=self._hold_s,
                wait_s=self._wait_s,
            )
            if not batch:
                if self.groups.releasing or self._read_past_held():
                    continue
                # Out of reach: complete if that is only later messages, as far as SQS's count at
                # the start tells.
                self.complete = not self.unreachable or (
                    self.start is not None and self.fresh >= self.start.approximate_visible
                )
                return
            letters = [Letter.from_message(m) for m in batch]
            new = [x for x in letters if x.message_id not in self.seen]
            fresh = [x for x in new if self.start is None or self.start.holds(x)]
            requeued = self.groups.received(letters, {x.message_id for x in fresh})
            # Recorded before any is yielded, so a caller that stops mid-page releases the rest.
            for letter in letters:
                self.held[letter.message_id] = letter.receipt_handle
                self.seen.add(letter.message_id)
            self.arrived += len(new) - len(fresh)
            self.fresh += len(fresh)
            if fresh or not released:
                # A receive after a release that brought nothing to read is neither progress
                # nor idleness: the next groups of the round are still to come (`Groups`).
                self._idle.record(
                    fresh=len(fresh),
                    later=len(new) - len(fresh),
                    requeued_only=requeued == len(letters) - len(new),
                )
            if not self.groups.releasing and (
                released or len(batch) < constants.SQS_MAX_BATCH_ENTRIES
            ):
                # A round just ended, or the receive was not full: what is still visible may
                # be behind held messages. Look now rather than after an empty long poll.
                self._read_past_held(final=False)
            yield from fresh
        self.complete = self._idle.complete

    @property
    def _out(self) -> TextIO:
        return sys.stderr if self._err is None else self._err

    def _read_past_held(self, *, final: bool = True) -> bool:
        """FIFO: whether messages are still visible behind held ones and a round of releases
        may reach them (`Groups`). `final`, after an empty receive: if none may, they are
        `unreachable`."""
        if not self.groups.fifo:
            return False
        visible = visible_count(self._sqs, self._queue_url)
        if visible and self.groups.start_round(self.held):
            return True
        if final:
            self.unreachable = visible
        return False


class Idle:
    """When a scan bounded by its start ends: after `limit` receives in a row that brought no
    message from before the start not read yet (the start's messages are done: only later ones
    come), or only messages read already (their hold ran out: the scan is then not complete).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.later = 0  # receives in a row that brought only messages sent after the start
        self.stale = 0  # ... and those that brought only messages read already

    def record(self, *, fresh: int, later: int, requeued_only: bool = False) -> None:
        """Note a receive: `requeued_only`, every message it brought that was read already was
        one the scan released itself (`Groups`), not one whose hold ran out."""
        if fresh:
            self.later = self.stale = 0
        elif later:
            self.later += 1
        elif not requeued_only:
            self.stale += 1

    @property
    def done(self) -> bool:
        return self.later + self.stale >= self.limit

    @property
    def complete(self) -> bool:
        """Ended by later messages alone: no hold ran out on the way."""
        return self.stale == 0


@contextlib.contextmanager
def peek(
    sqs: Any,
    queue_url: str,
    *,
    hold_s: int = PEEK_HOLD_S,
    wait_s: int = PEEK_WAIT_S,
    idle_receives: int = PEEK_IDLE_RECEIVES,
    stop: threading.Event | None = None,
    err: TextIO | None = None,
    start: Start | None = None,
) -> Iterator[Peek]:
    """A scan that consumes nothing: each receive hides its page for `hold_s`, none is deleted.

    Every message read is released (made visible again) when the block ends, also on errors
    and Ctrl-C; release failures go to `err` (default stderr) and `Peek.not_released`. With
    `start`, only messages that were there at the start are yielded, and the scan ends once
    only later ones come (`Idle`), however fast they keep arriving.
    """
    scan = Peek(
        sqs,
        queue_url,
        hold_s=hold_s,
        wait_s=wait_s,
        idle_receives=idle_receives,
        stop=stop,
        start=start,
        err=err,
    )
    try:
        yield scan
    finally:
        held, scan.held = scan.held, {}
        scan.not_released = release(sqs, queue_url, held, sys.stderr if err is None else err)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
