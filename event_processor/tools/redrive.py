"""`dlq redrive`: move rejected submissions from the DLQ back to the source queue, each
deleted from the DLQ only after it was sent, each at most once, and only those that were there
when the run started (docs/operations.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from event_processor import constants, exitcodes, signals
from event_processor.config import Settings
from event_processor.contract.letters import KIND_EVENTS, string_attribute
from event_processor.tools import aws, fifo, peek
from event_processor.tools.args import positive_float, positive_int
from event_processor.tools.dead_letters import KNOWN_REASONS, Letter
from event_processor.tools.recheck import PUBLISH, ContractCheck, Verdict, contract_check
from event_processor.tools.text import body_preview, counts, plural, preview

# Long poll of a redrive receive: an empty long poll means nothing visible is left.
REDRIVE_WAIT_S = 1
# After the scan, how long a run waits at most for the daemon to take what it moved, so that
# the letters those come back as are counted ("rejected again") rather than found by the next
# run. It ends sooner when the source queue is empty or nothing takes from it (`_Redrive.settle`).
SETTLE_MAX_S = 10.0
# A progress line on stderr this often while a run goes (not with --quiet).
PROGRESS_EVERY_S = 5.0
# Examples per verdict that a dry run shows (all of them with --verbose).
DRY_RUN_EXAMPLES = 3
# Characters of a body in a dry run's lines.
DRY_RUN_PREVIEW_CHARS = 100


class Pacer:
    """At most `rate` messages a second: message i (from 0) goes at or after start + i / rate.

    So N messages take at least (N - 1) / rate seconds. It waits on a monotonic clock until a
    batch's last message is due, rather than sleeping a fixed time after each batch.
    """

    def __init__(
        self, rate: float | None, stop: threading.Event, clock: aws.Clock = time.monotonic
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._stop = stop
        self._clock = clock
        self._start: float | None = None
        self._sent = 0

    @property
    def batch_size(self) -> int:
        """Messages per SendMessageBatch: at most one second's worth, so the pace stays smooth."""
        if self.rate is None:
            return constants.SQS_MAX_BATCH_ENTRIES
        return max(1, min(constants.SQS_MAX_BATCH_ENTRIES, int(self.rate)))

    def wait(self, count: int) -> bool:
        """Block until `count` more messages may go; False if stopped meanwhile."""
        if self.rate is None:
            return not self._stop.is_set()
        now = self._clock()
        if self._start is None:
            self._start = now
        due = self._start + (self._sent + count - 1) / self.rate
        while (delay := due - self._clock()) > 0:
            if self._stop.wait(delay):
                return False
        return not self._stop.is_set()

    def sent(self, count: int) -> None:
        self._sent += count


# --------------------------------------------------------------------------------------------
# The summary


@dataclass
class RedriveSummary:
    dry_run: bool
    start: peek.Start | None = None  # what the DLQ held when the run started
    moved: int = 0  # sent to the source queue and deleted from the DLQ (dry run: would move)
    skipped_events: int = 0  # event letters: not submissions, never moved
    skipped_event_count: int = 0  # the rejected events those letters list
    skipped_other: Counter[str] = field(default_factory=Counter)  # reason -> not chosen
    failed: int = 0
    read: int = 0  # letters from before the start looked at
    # Letters that this run's own moves came back as (their source_message_id, or for one SQS's
    # redrive policy moved, their MessageId, is a message this run sent): never moved again.
    rejected_again: Counter[str] = field(default_factory=Counter)  # submissions by reason
    rejected_again_letters: int = 0  # event letters of moved submissions (they published)
    rejected_again_events: int = 0  # the rejected events those letters list
    arrived: int = 0  # letters sent after the start, not by this run: not moved, not counted
    # FIFO DLQ: letters not moved because an earlier letter of their group failed to move
    # (nothing overtakes a failure: they stay, in order, for the next run).
    held_back: int = 0
    # FIFO DLQ: letters still visible at the end, behind 10 or more letters of their group that
    # the run does not move (`peek.Groups`): not read.
    unreachable: int = 0
    # The dry run's check: what the daemon would do with each letter it would move.
    verdicts: Counter[str] = field(default_factory=Counter)  # PUBLISH or reason -> letters
    events_rejected: Counter[str] = field(default_factory=Counter)  # of those it would publish
    check: str | None = None  # ContractCheck.describe()
    examples: dict[str, list[str]] = field(default_factory=dict)  # verdict -> lines
    limited: bool = False  # --max stopped the run, with more to move behind it
    complete: bool = False  # every letter from before the start was read (or --max reached)
    settled: str | None = None  # how the wait for the daemon ended (SETTLED_*); None: no wait
    interrupted: bool = False
    aborted: str | None = None

    @property
    def skipped(self) -> int:
        return self.skipped_events + sum(self.skipped_other.values())

    @property
    def approximate_at_start(self) -> int:
        return 0 if self.start is None else self.start.approximate_visible

    @property
    def left(self) -> int:
        """Letters from before the start not looked at: SQS's approximate count at the start
        minus those read, so approximate too."""
        return max(0, self.approximate_at_start - self.read)

    def skip(self, letter: Letter, why: str) -> None:
        if why == "event":
            self.skipped_events += 1
            self.skipped_event_count += 0 if letter.events is None else letter.events.count
        else:
            self.skipped_other[letter.reason] += 1

    def reject_again(self, letter: Letter) -> None:
        if letter.events is not None:
            self.rejected_again_letters += 1
            self.rejected_again_events += letter.events.count
        else:
            self.rejected_again[letter.reason] += 1

    def progress(self) -> str:
        """The running totals, one line (stderr, every PROGRESS_EVERY_S)."""
        if self.dry_run:
            return (
                f"dry run: read {self.read} of ~{self.approximate_at_start}: would move"
                f" {self.moved}, skipped {self.skipped}"
            )
        return (
            f"redrive: read {self.read} of ~{self.approximate_at_start}: moved {self.moved},"
            f" rejected again {self.rejected_again.total()}, skipped {self.skipped},"
            f" failed {self.failed}"
        )

    def text(self) -> str:
        verb = "would move" if self.dry_run else "moved"
        parts = []
        if self.skipped_events:
            parts.append(
                f"{plural(self.skipped_events, 'event letter')} listing"
                f" {plural(self.skipped_event_count, 'rejected event')} (not submissions)"
            )
        if self.skipped_other:
            parts.append(f"other reasons ({counts(self.skipped_other)})")
        detail = f" [{'; '.join(parts)}]" if parts else ""
        head = "dry run, nothing changed: " if self.dry_run else ""
        lines = [f"{head}{verb} {self.moved}, skipped {self.skipped}{detail}, failed {self.failed}"]
        if self.dry_run and self.check is not None:
            lines.append(self._verdicts_line())
        if self.rejected_again:
            lines.append(
                f"rejected again: {self.rejected_again.total()} ({counts(self.rejected_again)}):"
                " the daemon dead-lettered them again after this run moved them, so the cause"
                " is not fixed; they are left in the DLQ"
            )
        if self.rejected_again_letters:
            lines.append(
                f"moved submissions published with rejected events:"
                f" {plural(self.rejected_again_letters, 'event letter')} listing"
                f" {plural(self.rejected_again_events, 'rejected event')}, left in the DLQ"
            )
        if self.arrived:
            lines.append(
                f"arrived after the start: {plural(self.arrived, 'letter')}, not moved (a later"
                " run takes them)"
            )
        if self.held_back:
            lines.append(
                f"held back: {plural(self.held_back, 'letter')} behind a letter of their message"
                " group that failed to move, left in the DLQ in order (nothing overtakes a"
                " failure; run again)"
            )
        lines += self._notes()
        if self.dry_run:
            for verdict, shown in self.examples.items():
                lines.append(f"examples ({_verdict_text(verdict)}):")
                lines += shown
        return "\n".join(lines)

    def _verdicts_line(self) -> str:
        published = self.verdicts[PUBLISH]
        rejected = Counter({k: n for k, n in self.verdicts.items() if k != PUBLISH})
        events = ""
        if self.events_rejected:
            events = (
                f" (with {plural(self.events_rejected.total(), 'rejected event')}:"
                f" {counts(self.events_rejected)})"
            )
        again = f" ({counts(rejected)})" if rejected else ""
        return (
            f"checked against the current contract ({self.check}): would publish"
            f" {published}{events}, would be rejected again {rejected.total()}{again}"
        )

    def _notes(self) -> list[str]:
        lines = []
        if self.limited:
            head = "a SAMPLE: the dry run stopped" if self.dry_run else "stopped"
            lines.append(
                f"NOTE: {head} at --max {self.moved} after reading {self.read} of"
                f" ~{self.approximate_at_start} messages; the DLQ holds more to move"
            )
        elif self.unreachable and self.complete and not self.interrupted and not self.aborted:
            lines.append(
                f"NOTE: ~{self.unreachable} letters sent after the start (letters rejected again"
                " among them, then not counted) were not read: in a FIFO DLQ they are behind 10"
                " letters of their message group that this run holds (docs/operations.md, FIFO"
                " queues)"
            )
        elif self.unreachable and not self.interrupted and not self.aborted:
            behind = (
                "the first 10 letters of their message group (a dry run deletes nothing)"
                if self.dry_run
                else "10 or more letters of their message group that this run does not move"
                " (event letters, other reasons)"
            )
            lines.append(
                f"NOTE: ~{self.unreachable} letters not read: in a FIFO DLQ they are behind"
                f" {behind}, and SQS returns no later letter of a group past held ones"
                " (docs/operations.md, FIFO queues)"
            )
        elif not self.complete and not self.interrupted and not self.aborted:
            lines.append(
                f"NOTE: stopped early: {peek.PEEK_IDLE_RECEIVES} receives in a row brought only"
                " letters already read (their hold ran out); it may have missed some"
            )
        if self.settled in SETTLE_NOTES:
            lines.append(f"NOTE: {SETTLE_NOTES[self.settled]}")
        if self.interrupted:
            lines.append(
                f"interrupted: ~{self.left} letters from before the start not looked at (SQS's"
                " approximate count at the start minus those read); run again to go on"
            )
        if self.aborted:
            lines.append(f"aborted: {self.aborted}")
        return lines

    def as_json(self) -> dict[str, Any]:
        """The summary as one JSON object (`--json`; keys documented in docs/operations.md)."""
        rejected = {k: n for k, n in self.verdicts.items() if k != PUBLISH}
        return {
            "dry_run": self.dry_run,
            "start_sent_by": None if self.start is None else _iso_ms(self.start.sent_by_ms),
            "approximate_at_start": self.approximate_at_start,
            "read": self.read,
            "moved": self.moved,
            "failed": self.failed,
            "skipped": self.skipped,
            "skipped_event_letters": self.skipped_events,
            "skipped_events": self.skipped_event_count,
            "skipped_by_reason": dict(self.skipped_other),
            "rejected_again": self.rejected_again.total(),
            "rejected_again_by_reason": dict(self.rejected_again),
            "rejected_again_event_letters": self.rejected_again_letters,
            "rejected_again_events": self.rejected_again_events,
            "arrived_after_start": self.arrived,
            "held_back": self.held_back,
            "unreachable": self.unreachable,
            "check": None
            if not self.dry_run
            else {
                "signatures": self.check,
                "would_publish": self.verdicts[PUBLISH],
                "would_publish_events_rejected": dict(self.events_rejected),
                "would_be_rejected_again": sum(rejected.values()),
                "would_be_rejected_again_by_reason": rejected,
            },
            "limited": self.limited,
            "complete": self.complete,
            "settled": self.settled,
            "interrupted": self.interrupted,
            "left": self.left,
            "aborted": self.aborted,
        }


# How the wait for the daemon ended (`_Redrive.settle`), and what the summary says of it.
SETTLED_TAKEN = "taken"  # the source queue emptied: every moved submission was finished
SETTLED_UNTAKEN = "untaken"  # nothing took from the source queue (no daemon running?)
SETTLED_TIMEOUT = "timeout"  # SETTLE_MAX_S passed with the source queue still busy
SETTLED_INTERRUPTED = "interrupted"
SETTLE_NOTES = {
    SETTLED_UNTAKEN: "nothing took the moved submissions from the source queue while this ran"
    " (is the daemon running?); those rejected again later are not counted here",
    SETTLED_TIMEOUT: f"the source queue was still busy {SETTLE_MAX_S:g} s after the scan; moved"
    " submissions rejected again later are not counted here",
}


def _verdict_text(verdict: str) -> str:
    return "would publish" if verdict == PUBLISH else f"would be rejected again: {verdict}"


def _iso_ms(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat(timespec="seconds")


class Progress:
    """Running totals on stderr every PROGRESS_EVERY_S, for a person watching a long run."""

    def __init__(
        self,
        summary: RedriveSummary,
        err: TextIO,
        *,
        enabled: bool,
        clock: aws.Clock = time.monotonic,
        every_s: float = PROGRESS_EVERY_S,
    ) -> None:
        self._summary = summary
        self._err = err
        self._enabled = enabled
        self._clock = clock
        self._every_s = every_s
        self._due = clock() + every_s

    def tick(self, text: str | None = None) -> None:
        """The running totals (or `text`), if the last line is PROGRESS_EVERY_S old."""
        if self._enabled and (now := self._clock()) >= self._due:
            self._due = now + self._every_s
            print(self._summary.progress() if text is None else text, file=self._err, flush=True)


# --------------------------------------------------------------------------------------------
# The run


def _chosen(letter: Letter, reason: str | None) -> str | None:
    """Why `letter` is not moved, or None if it is."""
    if letter.kind == KIND_EVENTS:
        return "event"
    if reason is not None and letter.reason != reason:
        return "reason"
    return None


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

    It ends by itself (issue 20: a run that moved the same submission 28,190 times while the
    daemon kept dead-lettering it): only letters from before the start are moved, each once;
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
            why = _chosen(letter, self.reason)
            if why is None and left is not None and len(chosen) >= left:
                self.seen.discard(letter.message_id)  # beyond --max: not looked at, released
                self.summary.limited = True
                continue
            fresh += 1
            progress.add(letter.message_id)
            self.summary.read += 1
            if why is None:
                chosen.append(letter)
            else:
                self.summary.skip(letter, why)
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
                f"{self.summary.progress()}; waiting up to {self.settle_s:g} s for the daemon to"
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
            why = _chosen(letter, reason)
            if why is None and max_messages is not None and summary.moved >= max_messages:
                # One more to move than --max allows: the real run would stop before it.
                summary.limited = True
                break
            summary.read += 1
            if why is not None:
                summary.skip(letter, why)
                continue
            summary.moved += 1
            verdict = check(letter)
            summary.verdicts[verdict.name] += 1
            summary.events_rejected.update(verdict.events_rejected)
            line = _dry_run_line(letter, verdict)
            if out is not None:
                print(f"would move {letter.message_id} reason={letter.reason}: {line}", file=out)
            shown = summary.examples.setdefault(verdict.name, [])
            if len(shown) < DRY_RUN_EXAMPLES:
                shown.append(f"  {letter.message_id} (reason={letter.reason}): {line}")
            progress.tick()
    summary.arrived = scan.arrived
    summary.unreachable = scan.unreachable
    summary.complete = scan.complete or summary.limited
    summary.interrupted = scan.interrupted
    return summary


def _dry_run_line(letter: Letter, verdict: Verdict) -> str:
    """A letter's verdict and decoded body, one line (the rejection's detail names no secret)."""
    if verdict.rejection is not None:
        said = f"{verdict.name}: {preview(verdict.rejection.detail, DRY_RUN_PREVIEW_CHARS)}"
    elif verdict.events_rejected:
        said = f"publish, with rejected events ({counts(verdict.events_rejected)})"
    else:
        said = "publish"
    return f"{said}; body: {body_preview(letter.body, DRY_RUN_PREVIEW_CHARS)}"


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
    ticker = Progress(summary, err, enabled=progress, clock=clock)
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


# --------------------------------------------------------------------------------------------
# CLI


def register(dlq_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = dlq_commands.add_parser(
        "redrive",
        help="move rejected submissions from the DLQ back to the source queue",
        description="Move the rejected submissions that are in the DLQ when it starts back to "
        "the source queue, each once, deleting each from the DLQ only after it was sent. What "
        "the daemon dead-letters again meanwhile is counted as rejected again and left in the "
        "DLQ; the run ends by itself. Rejected-event letters are not submissions and are never "
        "moved. Reason `none` means messages SQS's redrive policy moved.",
    )
    aws.add_flags(parser, "dlq_url", "queue_url", "queue_name", required=("dlq_url",))
    parser.add_argument(
        "--reason",
        default=None,
        choices=KNOWN_REASONS,
        metavar="REASON",
        help=f"move only letters with this reason: {', '.join(KNOWN_REASONS)}",
    )
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=None,
        metavar="N",
        help="at most N messages per second (default: unlimited)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check what would move against the current contract (and signatures, when a key "
        "set is configured); change nothing",
    )
    parser.add_argument(
        "--max", type=positive_int, default=None, metavar="N", help="move at most N messages"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "-v", "--verbose", action="store_true", help="a line per letter (stderr with --json)"
    )
    output.add_argument(
        "-q", "--quiet", action="store_true", help="the summary only: no progress on stderr"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on stdout"
    )
    signatures = parser.add_argument_group(
        "signatures", "for --dry-run: check them as the daemon would (docs/authentication.md)"
    )
    aws.add_flags(signatures, "auth_mode", "auth_keys_secret_id", "auth_keys_file", with_aws=False)
    parser.set_defaults(handler=command)


@aws.tool_command
def command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    dlq_url = aws.dlq_url_of(settings)
    sqs = aws.client(settings, "sqs")
    queue_url = aws.source_queue_url(sqs, settings)
    aws.check_queue(sqs, dlq_url, "DLQ")
    aws.check_queue(sqs, queue_url, "source queue")
    if queue_url == dlq_url:
        raise aws.UsageError("refusing to redrive: the source queue is the DLQ")
    check = contract_check(settings) if args.dry_run else None
    # With --json, stdout carries the summary alone: the rest goes to stderr.
    talk: TextIO = sys.stderr if args.json else out
    if not args.quiet:
        print(
            f"{'dry run: ' if args.dry_run else ''}redrive {dlq_url} -> {queue_url}"
            f" (reason: {args.reason or 'any'}, rate: {args.rate or 'unlimited'} msgs/s,"
            f" max: {args.max or 'all'})",
            file=talk,
        )
    stop = threading.Event()
    with signals.stop_on_signals(stop):
        try:
            summary = redrive(
                sqs,
                dlq_url,
                queue_url,
                reason=args.reason,
                rate=args.rate,
                dry_run=args.dry_run,
                max_messages=args.max,
                check=check,
                verbose=args.verbose,
                progress=not args.quiet,
                out=talk,
                stop=stop,
            )
        except (ClientError, BotoCoreError) as exc:  # the start's look or a dry run's receive
            print(f"redrive failed: {exc}", file=sys.stderr)
            return exitcodes.FAILED
        except KeyboardInterrupt:  # a second signal: held messages were released on the way
            print("interrupted", file=sys.stderr)
            return exitcodes.INTERRUPTED
    if args.json:
        out.write(json.dumps(summary.as_json(), indent=2) + "\n")
    else:
        print(summary.text(), file=out)
    if summary.interrupted:
        return exitcodes.INTERRUPTED
    return exitcodes.FAILED if summary.failed or summary.aborted else exitcodes.OK
