"""`dlq redrive`: move rejected submissions from the DLQ back to the source queue, each
deleted from the DLQ only after it was sent, each at most once, and only those that were there
when the run started (docs/operations.md). The run and its dry run; what they count is in
`tally.py`, how fast they go in `pacing.py`, what they print in `redrive_report.py`.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from event_processor import constants
from event_processor.contract.letters import string_attribute
from event_processor.tools import aws, fifo, peek, redrive_report
from event_processor.tools.dead_letters import Letter
from event_processor.tools.pacing import Pacer, Progress
from event_processor.tools.recheck import ContractCheck
from event_processor.tools.tally import (
    SETTLE_MAX_S,
    SETTLED_INTERRUPTED,
    SETTLED_TAKEN,
    SETTLED_TIMEOUT,
    SETTLED_UNTAKEN,
    RedriveSummary,
    Take,
)
from event_processor.tools.text import plural

# Long poll of a redrive receive: an empty long poll means nothing visible is left.
REDRIVE_WAIT_S = 1


def _size_batches(letters: list[Letter]) -> Iterator[list[Letter]]:
    """Split into SendMessageBatch calls under the batch byte limit (a big one goes alone)."""
    batch: list[Letter] = []
    size = 0
    for letter in letters:
        letter_size = letter.size()
        if batch and size + letter_size > constants.SQS_MAX_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(letter)
        size += letter_size
    if batch:
        yield batch


class _Redrive:
    """One redrive run. Messages not moved are held (hidden) until the end, then released.

    Holding them is what lets the scan get past them: released at once, the same messages
    would come back on the next receive (moto always returns the oldest first), and the scan
    would never reach the ones behind them. They are released (ChangeMessageVisibility 0) as
    soon as the run ends, also on errors and Ctrl-C; if the tool dies, SQS shows them again
    after the hold.

    It ends by itself, even while the daemon dead-letters again what it moves (issue 20):
    only letters from before the start are moved, each once;
    a letter its own moves came back as is recognised by its `source_message_id` and never
    moved; and the scan ends once receives bring only such later letters (`peek.Idle`).
    """

    def __init__(
        self,
        sqs: Any,
        dlq_url: str,
        queue_url: str,
        *,
        start: peek.Start,
        reason: str | None,
        max_messages: int | None,
        pacer: Pacer,
        out: TextIO | None,
        err: TextIO,
        progress: Progress,
        summary: RedriveSummary,
        clock: aws.Clock,
        settle_s: float,
    ) -> None:
        self.sqs = sqs
        self.dlq_url = dlq_url
        self.queue_url = queue_url
        self.start = start
        self.reason = reason
        self.max_messages = max_messages
        self.pacer = pacer
        self.out = out  # a line per message moved; None: none (not --verbose)
        self.err = err
        self.progress = progress
        self.summary = summary
        self.clock = clock
        self.settle_s = settle_s
        # Holds outlast the run, so that a skipped letter does not come back mid-scan: a
        # paced run lasts about the DLQ's count over the rate.
        paced_s = 0 if pacer.rate is None else math.ceil(start.approximate_visible / pacer.rate)
        self.hold_s = min(peek.PEEK_HOLD_S + paced_s, constants.SQS_MAX_VISIBILITY_S)
        # Message id -> latest receipt handle of every message received and not deleted: all are
        # released at the end.
        self.held: dict[str, str] = {}
        self.seen: set[str] = set()
        self.sent: set[str] = set()  # message ids this run sent to the source queue
        # A FIFO DLQ: reading past held letters of a group (`peek.Groups`), and the groups of
        # the letters moved (their letters rejected again come back in the same group).
        self.groups = peek.Groups(fifo.is_fifo(dlq_url))
        self.moved_groups: set[str] = set()
        # A FIFO source queue: each letter goes back with a group and a deduplication id.
        self.fifo_source = fifo.is_fifo(queue_url)

    def receive(self) -> list[dict[str, Any]]:
        """A batch of the DLQ, hidden for the run's hold (every one is released at the end)."""
        return peek.receive(
            self.sqs,
            self.dlq_url,
            count=constants.SQS_MAX_BATCH_ENTRIES,
            visibility_s=self.hold_s,
            wait_s=REDRIVE_WAIT_S,
        )

    def remaining(self) -> int | None:
        if self.max_messages is None:
            return None
        return self.max_messages - self.summary.moved - self.summary.failed

    def run(self, stop: threading.Event) -> RedriveSummary:
        try:
            self.scan(stop)
            if self.sent and not self.summary.interrupted:
                self.settle(stop)
        except (ClientError, BotoCoreError) as exc:
            self.summary.aborted = f"{type(exc).__name__}: {exc}"
        finally:
            self.release()
        return self.summary

    def scan(self, stop: threading.Event) -> None:
        """Move the letters from before the start, until none is left to read."""
        idle = peek.Idle(peek.PEEK_IDLE_RECEIVES)
        while not idle.done:
            if stop.is_set():
                self.summary.interrupted = True
                return
            left = self.remaining()
            if left is not None and left <= 0:
                self.summary.complete = True
                return
            released = self.release_next()
            messages = self.receive()
            if not messages:
                if self.groups.releasing or self.read_past_held():
                    continue
                # An empty long poll: nothing visible is left, or (FIFO) nothing within reach:
                # complete if that is only later letters, as far as SQS's count at the start
                # tells (it counts letters that were there).
                self.summary.complete = not self.summary.unreachable or self.summary.left == 0
                return
            chosen, fresh, later, requeued_only = self.sort(messages, left)
            if fresh or not released:
                # A receive after a release that brought nothing to move is neither progress
                # nor idleness: the next groups of the round are still to come (`peek.Groups`).
                idle.record(fresh=fresh, later=later, requeued_only=requeued_only)
            if not self.send(chosen, stop):
                self.summary.interrupted = True
                return
            if not self.groups.releasing and (
                released or len(messages) < constants.SQS_MAX_BATCH_ENTRIES
            ):
                # A round just ended, or the receive was not full: what is still visible may
                # be behind held letters. Look now rather than after an empty long poll.
                self.read_past_held(final=False)
            self.progress.tick()
        self.summary.complete = idle.complete

    def release_next(self) -> int:
        """FIFO: make the next groups' held letters visible, to read past them (`peek.Groups`);
        how many."""
        if not self.groups.releasing:
            return 0
        released = self.groups.next_release(self.held)
        peek.release(self.sqs, self.dlq_url, released, self.err)
        return len(released)

    def read_past_held(self, *, final: bool = True) -> bool:
        """FIFO DLQ: whether a round of releases may reach letters still visible behind held
        ones (`peek.Groups`). `final`, after an empty receive: if none may, those letters are
        counted as unreachable."""
        if not self.groups.fifo:
            return False
        visible = peek.visible_count(self.sqs, self.dlq_url)
        if visible and self.groups.start_round(self.held):
            return True
        if final:
            self.summary.unreachable = visible
        return False

    def ours(self, letter: Letter) -> bool:
        """Whether `letter` is what a message this run sent came back as: dead-lettered by the
        daemon (`source_message_id`), or moved by SQS's redrive policy (same MessageId)."""
        source = string_attribute(letter.attributes, "source_message_id")
        return letter.message_id in self.sent or (source is not None and source in self.sent)

    def sort(
        self, messages: list[dict[str, Any]], left: int | None, *, settling: bool = False
    ) -> tuple[list[Letter], int, int, bool]:
        """The letters to move now, how many letters from before the start (fresh) and after
        it (later) were new to this run, and whether every letter read already that came back
        was one this run released itself (FIFO, `peek.Groups`, which learns what the run is
        after: letters from before the start and what its own moves came back as, and while
        `settling` any new one; not other later letters, which may keep coming). Every message
        received is held until deleted or released."""
        chosen: list[Letter] = []
        fresh = later = 0
        letters = [Letter.from_message(message) for message in messages]
        again = sum(1 for letter in letters if letter.message_id in self.seen)
        progress: set[str] = set()
        for letter in letters:
            self.held[letter.message_id] = letter.receipt_handle
            if letter.message_id in self.seen:
                # Seen already (its hold ran out during a long run): hidden again by this
                # receive; the newest receipt handle is kept for the release.
                continue
            self.seen.add(letter.message_id)
            if settling:
                progress.add(letter.message_id)
            if self.ours(letter):
                progress.add(letter.message_id)  # a few per letter moved: worth reading on
                later += 1
                self.summary.reject_again(letter)
                continue
            if not self.start.holds(letter):
                later += 1
                self.summary.arrived += 1
                continue
            taken = self.summary.take(
                letter, self.reason, None if left is None else left - len(chosen)
            )
            if taken is Take.BEYOND:
                self.seen.discard(letter.message_id)  # not looked at, released
                continue
            fresh += 1
            progress.add(letter.message_id)
            if taken is Take.MOVE:
                chosen.append(letter)
        requeued = self.groups.received(letters, progress)
        return chosen, fresh, later, requeued == again

    def send(self, chosen: list[Letter], stop: threading.Event) -> bool:
        """Move `chosen` at the pacer's pace, in order; False if stopped before all went.

        FIFO DLQ: a letter whose group had a letter fail to move in this run stays (held,
        then released in order), so that nothing of a group overtakes a failure."""
        for start in range(0, len(chosen), self.pacer.batch_size):
            paced = self.unpinned(chosen[start : start + self.pacer.batch_size])
            if not paced:
                continue
            if not self.pacer.wait(len(paced)):
                return False
            self.pacer.sent(len(paced))
            for batch in _size_batches(paced):
                self.move(self.unpinned(batch))
        return True

    def unpinned(self, letters: list[Letter]) -> list[Letter]:
        """`letters` without those of groups where a move failed (counted as held back)."""
        if not self.groups.pinned:
            return letters
        kept = [x for x in letters if (x.group_id or "") not in self.groups.pinned]
        self.summary.held_back += len(letters) - len(kept)
        return kept

    def settle(self, stop: threading.Event) -> None:
        """Wait (at most `settle_s`) for the daemon to finish what this run moved, reading the
        DLQ meanwhile, so that what comes back is counted as rejected again.

        The source queue's counts, read before and after a receive from the DLQ that found
        nothing, say when to stop: both 0 before it means every moved message was finished
        (the daemon deletes one only after its dead letter was sent), so that receive saw them
        all; nothing in flight and no fewer visible after its long poll than before means
        nothing takes from the queue.
        """
        deadline = self.clock() + self.settle_s
        while True:
            if stop.is_set():
                self.summary.settled = SETTLED_INTERRUPTED
                return
            if self.clock() >= deadline:
                self.summary.settled = SETTLED_TIMEOUT
                return
            before = aws.queue_counts(self.sqs, self.queue_url)
            self.release_next()
            messages = self.receive()
            chosen, _, _, _ = self.sort(messages, self.remaining(), settling=True)
            if chosen and not self.send(chosen, stop):
                self.summary.settled = SETTLED_INTERRUPTED
                return
            self.progress.tick(
                f"{redrive_report.progress_line(self.summary)}; waiting up to {self.settle_s:g} s for the daemon to"
                f" take the {plural(len(self.sent), 'submission')} moved"
            )
            if messages or self.groups.releasing:
                continue  # more may be visible: read on before judging the source queue
            if before == (0, 0):
                if self.read_moved_groups():
                    continue
                self.summary.settled = SETTLED_TAKEN
                return
            visible, in_flight = aws.queue_counts(self.sqs, self.queue_url)
            if in_flight == 0 and before[1] == 0 and visible >= before[0]:
                self.summary.settled = SETTLED_UNTAKEN
                return

    def read_moved_groups(self) -> bool:
        """FIFO DLQ, once the source queue is empty: whether a round of releases may bring
        letters rejected again that wait behind held letters of their group (the groups of
        the letters moved); rounds go on while one brings something new."""
        if not self.groups.fifo or (self.groups.rounds and not self.groups.round_new):
            return False
        if not peek.visible_count(self.sqs, self.dlq_url):
            return False
        self.groups.exhausted -= self.moved_groups  # new letters may have come since
        return self.groups.start_round(self.held, only=self.moved_groups)

    def fail(self, letter: Letter, why: str) -> None:
        self.summary.failed += 1
        print(f"FAILED {letter.message_id} reason={letter.reason}: {why}", file=self.err)

    def move(self, letters: list[Letter]) -> None:
        """Send to the source queue; delete from the DLQ only what was sent."""
        if not letters:
            return
        by_id = {str(i): letter for i, letter in enumerate(letters)}
        try:
            response = self.sqs.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[self.entry(entry_id, letter) for entry_id, letter in by_id.items()],
            )
        except (ClientError, BotoCoreError) as exc:
            for letter in letters:
                self.fail(letter, f"not sent ({type(exc).__name__}), kept in the DLQ")
            raise
        sent: dict[str, str] = {}  # entry id -> new message id
        for entry in response.get("Successful", []):
            sent[entry["Id"]] = entry["MessageId"]
        # Known before the delete: should the delete fail, what the copy comes back as is
        # still recognised as this run's.
        self.sent.update(sent.values())
        failed = {entry["Id"]: entry for entry in response.get("Failed", [])}
        for entry_id, letter in by_id.items():
            if entry_id not in sent:
                why = peek.error_text(failed.get(entry_id, {"Code": "NoResultForEntry"}))
                self.fail(letter, f"not sent ({why}), kept in the DLQ")
                if self.groups.fifo:
                    self.groups.pinned.add(letter.group_id or "")
            else:
                self.moved_groups.add(letter.group_id or "")
        if sent:
            self.delete({entry_id: by_id[entry_id] for entry_id in sent}, sent)

    def entry(self, entry_id: str, letter: Letter) -> dict[str, Any]:
        """A SendMessageBatch entry for `letter`: its body and the sender's attributes; to a
        FIFO source queue also its group (the letter's own MessageGroupId; one moved from a
        standard DLQ has none: the device its body names, else fifo.UNKNOWN_DEVICE_GROUP) and
        a deduplication id of its own (`fifo.redrive_deduplication_id`)."""
        entry: dict[str, Any] = {
            "Id": entry_id,
            "MessageBody": letter.body,
            "MessageAttributes": letter.original_attributes(),
        }
        if self.fifo_source:
            entry["MessageGroupId"] = letter.group_id or fifo.group_for(letter.body)
            entry["MessageDeduplicationId"] = fifo.redrive_deduplication_id(letter.message_id)
        return entry

    def delete(self, letters: dict[str, Letter], new_ids: dict[str, str]) -> None:
        entries = [
            {"Id": i, "ReceiptHandle": letter.receipt_handle} for i, letter in letters.items()
        ]
        try:
            response = self.sqs.delete_message_batch(QueueUrl=self.dlq_url, Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            for entry_id, letter in letters.items():
                self.fail(letter, self.duplicate(new_ids[entry_id], type(exc).__name__))
            raise
        deleted = {entry["Id"] for entry in response.get("Successful", [])}
        failed = {entry["Id"]: entry for entry in response.get("Failed", [])}
        for entry_id, letter in letters.items():
            if entry_id in deleted:
                del self.held[letter.message_id]
                self.summary.moved += 1
                if self.out is not None:
                    print(
                        f"moved {letter.message_id} -> {new_ids[entry_id]} reason={letter.reason}",
                        file=self.out,
                    )
            else:
                why = peek.error_text(failed.get(entry_id, {"Code": "NoResultForEntry"}))
                self.fail(letter, self.duplicate(new_ids[entry_id], why))

    @staticmethod
    def duplicate(new_id: str, why: str) -> str:
        return f"sent as {new_id} but not deleted from the DLQ ({why}): it is now in both queues"

    def release(self) -> None:
        """Make every held message visible again at once."""
        held, self.held = self.held, {}
        peek.release(self.sqs, self.dlq_url, held, self.err)


def _dry_run(
    sqs: Any,
    dlq_url: str,
    summary: RedriveSummary,
    *,
    start: peek.Start,
    reason: str | None,
    max_messages: int | None,
    check: ContractCheck,
    out: TextIO | None,
    err: TextIO,
    progress: Progress,
    stop: threading.Event,
) -> RedriveSummary:
    """Peek at the DLQ's letters from before the start as `inspect` does (hidden page by page,
    all released at the end) and check each one that would move as the daemon would."""
    summary.check = check.describe()
    with peek.peek(sqs, dlq_url, stop=stop, err=err, start=start) as scan:
        for letter in scan:
            room = None if max_messages is None else max_messages - summary.moved
            taken = summary.take(letter, reason, room)
            if taken is Take.BEYOND:
                break  # the real run would stop before it
            if taken is Take.SKIP:
                continue
            verdict = check(letter)
            summary.checked(letter, verdict)
            if out is not None:
                line = redrive_report.dry_run_line(letter, verdict)
                print(f"would move {letter.message_id} reason={letter.reason}: {line}", file=out)
            progress.tick()
    summary.finish(scan)
    summary.complete = scan.complete or summary.limited
    return summary


def redrive(
    sqs: Any,
    dlq_url: str,
    queue_url: str,
    *,
    reason: str | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    max_messages: int | None = None,
    check: ContractCheck | None = None,
    verbose: bool = False,
    progress: bool = True,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stop: threading.Event | None = None,
    clock: aws.Clock = time.monotonic,
    start: peek.Start | None = None,
    settle_s: float = SETTLE_MAX_S,
) -> RedriveSummary:
    """Move rejected submissions (of `reason`, if given) from the DLQ back to the source queue.

    Only letters that were in the DLQ at `start` (read from SQS when not given) are moved, each
    at most once; what this run's own moves come back as is counted as rejected again and left
    in the DLQ. Each message is deleted from the DLQ only after SendMessageBatch reported its
    entry sent; event letters are never moved (they are not submissions): the summary counts
    them and the rejected events they list. With `dry_run` the DLQ is only peeked at
    (`peek.peek`: paged through, every message made visible again at the end), nothing
    changes, and each letter that would move is put through `check` (default: the contract,
    signatures unchecked). `verbose`: a line per letter on `out`; `progress`: running totals on
    `err`.
    """
    if queue_url == dlq_url:
        raise ValueError("the source queue and the DLQ are the same queue")
    stop = threading.Event() if stop is None else stop
    start = peek.start_of(sqs, dlq_url) if start is None else start
    summary = RedriveSummary(dry_run=dry_run, start=start)
    ticker = Progress(
        lambda: redrive_report.progress_line(summary), err, enabled=progress, clock=clock
    )
    lines = out if verbose else None
    if dry_run:
        return _dry_run(
            sqs,
            dlq_url,
            summary,
            start=start,
            reason=reason,
            max_messages=max_messages,
            check=ContractCheck() if check is None else check,
            out=lines,
            err=err,
            progress=ticker,
            stop=stop,
        )
    run = _Redrive(
        sqs,
        dlq_url,
        queue_url,
        start=start,
        reason=reason,
        max_messages=max_messages,
        pacer=Pacer(rate, stop, clock),
        out=lines,
        err=err,
        progress=ticker,
        summary=summary,
        clock=clock,
        settle_s=settle_s,
    )
    return run.run(stop)
