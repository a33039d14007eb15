"""What a scan of the DLQ saw: the counts `dlq inspect`, `dlq redrive` and its dry run keep.

Counting only: the scans fill these in (`inspect.py`, `redrive.py`), the renderers read them
(`inspect_report.py`, `redrive_report.py`).
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from event_processor.contract.letters import KIND_EVENTS, KIND_SUBMISSION
from event_processor.tools import peek
from event_processor.tools.dead_letters import Letter
from event_processor.tools.recheck import Verdict


@dataclass(kw_only=True)
class ScanTally:
    """What any scan bounded by its start saw, whatever it does with the letters."""

    start: peek.Start | None = None  # what the DLQ held when the scan started
    read: int = 0  # letters from before the start looked at
    arrived: int = 0  # letters sent after the start: held, released, not counted
    # FIFO: letters still visible at the end, behind held letters of their group that the scan
    # cannot read past (`peek.Groups`): not read.
    unreachable: int = 0
    limited: bool = False  # the limit stopped the scan, with at least one more letter behind
    complete: bool = False  # every letter from before the start was read
    interrupted: bool = False  # Ctrl-C/SIGTERM stopped the scan
    not_released: int = 0  # letters read that could not be made visible again at the end

    @property
    def approximate_at_start(self) -> int:
        return 0 if self.start is None else self.start.approximate_visible

    @property
    def left(self) -> int:
        """Letters from before the start not looked at: SQS's approximate count at the start
        minus those read, so approximate too."""
        return max(0, self.approximate_at_start - self.read)

    def finish(self, scan: peek.Peek) -> None:
        """How a peek (`peek.peek`) ended, once its `with` block has released what it read."""
        self.complete, self.interrupted = scan.complete, scan.interrupted
        self.arrived = scan.arrived
        self.unreachable = scan.unreachable
        self.not_released = scan.not_released


# --------------------------------------------------------------------------------------------
# dlq inspect


@dataclass(frozen=True)
class ReasonCounts:
    """One row of the report: the messages with this `reason` attribute, and the events."""

    reason: str
    by_kind: dict[str, int]  # DLQ messages whose `reason` attribute is this one, by kind
    events: int  # rejected events of this reason listed in the event letters read

    @property
    def messages(self) -> int:
        return sum(self.by_kind.values())


@dataclass(kw_only=True)
class InspectReport(ScanTally):
    """The DLQ's letters by reason and kind, and the rejected events they list."""

    dlq_url: str
    max_messages: int  # the --limit
    examples_per_reason: int = 3
    # (reason attribute, kind) -> messages read; a letter of events of several reasons has the
    # reason attribute MIXED_REASONS.
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Each event's own reason -> rejected events listed in the event letters read.
    events: Counter[str] = field(default_factory=Counter)
    # submission_id of every event letter read (a submission's events may take several).
    event_submissions: set[str] = field(default_factory=set)
    # reason -> examples: submissions by their reason attribute, event letters under every
    # reason of their events (shown with their first events of that reason).
    examples: dict[str, list[Letter]] = field(default_factory=dict)

    @property
    def approximate_visible(self) -> int:
        return self.approximate_at_start

    @property
    def approximate_not_visible(self) -> int:
        return 0 if self.start is None else self.start.approximate_not_visible

    @property
    def sample(self) -> bool:
        """True when the limit stopped the scan: the counts cover only the messages read."""
        return self.limited

    def count(self, letter: Letter) -> bool:
        """Count `letter`; False, and `limited`, if the limit was reached before it.

        Checked on the message after the last one counted: a DLQ of exactly the limit is read
        whole, not reported as a sample.
        """
        if self.read >= self.max_messages:
            self.limited = True
            return False
        self.read += 1
        self.counts[letter.reason, letter.kind] += 1
        reasons = [letter.reason]
        if letter.events is not None:
            self.events.update(letter.events.by_reason)
            self.event_submissions.add(letter.events.submission_id)
            reasons = list(letter.events.by_reason)
        for reason in reasons:
            shown = self.examples.setdefault(reason, [])
            if len(shown) < self.examples_per_reason:
                shown.append(letter)
        return True

    def by_kind(self) -> dict[str, int]:
        """Messages read by kind."""
        kinds = Counter({KIND_SUBMISSION: 0, KIND_EVENTS: 0})
        for (_, kind), count in self.counts.items():
            kinds[kind] += count
        return dict(kinds)

    def by_reason(self) -> list[ReasonCounts]:
        """A row per reason; most rejections (submissions plus events) first."""
        kinds: dict[str, dict[str, int]] = {}
        for (reason, kind), count in self.counts.items():
            kinds.setdefault(reason, {})[kind] = count
        rows = [
            ReasonCounts(reason, kinds.get(reason, {}), self.events[reason])
            for reason in kinds.keys() | self.events.keys()
        ]
        return sorted(
            rows,
            key=lambda row: (
                -(row.by_kind.get(KIND_SUBMISSION, 0) + row.events),
                -row.messages,
                row.reason,
            ),
        )


# --------------------------------------------------------------------------------------------
# dlq redrive (and its dry run)


class Take(enum.Enum):
    """What a redrive does with a letter from before its start."""

    MOVE = "move"
    SKIP = "skip"  # not moved: an event letter, or another reason than --reason
    BEYOND = "beyond"  # one more to move than --max allows: not read, the run stops before it


# After the scan, how long a run waits at most for the daemon to take what it moved, so that
# the letters those come back as are counted ("rejected again") rather than found by the next
# run. It ends sooner when the source queue is empty or nothing takes from it.
SETTLE_MAX_S = 10.0
# How the wait for the daemon ended (`RedriveSummary.settled`).
SETTLED_TAKEN = "taken"  # the source queue emptied: every moved submission was finished
SETTLED_UNTAKEN = "untaken"  # nothing took from the source queue (no daemon running?)
SETTLED_TIMEOUT = "timeout"  # SETTLE_MAX_S passed with the source queue still busy
SETTLED_INTERRUPTED = "interrupted"
# Examples per verdict that a dry run keeps (all of them are printed with --verbose).
DRY_RUN_EXAMPLES = 3


@dataclass(kw_only=True)
class RedriveSummary(ScanTally):
    """What a redrive (or its dry run: `moved` is then what would move) did with the DLQ."""

    dry_run: bool
    moved: int = 0  # sent to the source queue and deleted from the DLQ (dry run: would move)
    skipped_events: int = 0  # event letters: not submissions, never moved
    skipped_event_count: int = 0  # the rejected events those letters list
    skipped_other: Counter[str] = field(default_factory=Counter)  # reason -> not chosen
    failed: int = 0
    # Letters that this run's own moves came back as (their source_message_id, or for one SQS's
    # redrive policy moved, their MessageId, is a message this run sent): never moved again.
    rejected_again: Counter[str] = field(default_factory=Counter)  # submissions by reason
    rejected_again_letters: int = 0  # event letters of moved submissions (they published)
    rejected_again_events: int = 0  # the rejected events those letters list
    # FIFO DLQ: letters not moved because an earlier letter of their group failed to move
    # (nothing overtakes a failure: they stay, in order, for the next run).
    held_back: int = 0
    # The dry run's check: what the daemon would do with each letter it would move.
    verdicts: Counter[str] = field(default_factory=Counter)  # PUBLISH or reason -> letters
    events_rejected: Counter[str] = field(default_factory=Counter)  # of those it would publish
    check: str | None = None  # ContractCheck.describe()
    # verdict -> the first DRY_RUN_EXAMPLES letters with it
    examples: dict[str, list[tuple[Letter, Verdict]]] = field(default_factory=dict)
    settled: str | None = None  # how the wait for the daemon ended (SETTLED_*); None: no wait
    aborted: str | None = None

    @property
    def skipped(self) -> int:
        return self.skipped_events + sum(self.skipped_other.values())

    def take(self, letter: Letter, reason: str | None, room: int | None) -> Take:
        """Count a letter from before the start: moved if it is a submission (of `reason`,
        if given) and `room` (how many more the run may move; None: no limit) allows."""
        if letter.kind == KIND_EVENTS:
            skip: str | None = "event"
        elif reason is not None and letter.reason != reason:
            skip = "reason"
        else:
            skip = None
        if skip is None and room is not None and room <= 0:
            self.limited = True
            return Take.BEYOND
        self.read += 1
        if skip is None:
            return Take.MOVE
        if skip == "event":
            self.skipped_events += 1
            self.skipped_event_count += 0 if letter.events is None else letter.events.count
        else:
            self.skipped_other[letter.reason] += 1
        return Take.SKIP

    def reject_again(self, letter: Letter) -> None:
        """Count a letter that a submission this run moved came back as."""
        if letter.events is not None:
            self.rejected_again_letters += 1
            self.rejected_again_events += letter.events.count
        else:
            self.rejected_again[letter.reason] += 1

    def checked(self, letter: Letter, verdict: Verdict) -> None:
        """Count a dry run's letter that would move, and what the daemon would do with it."""
        self.moved += 1
        self.verdicts[verdict.name] += 1
        self.events_rejected.update(verdict.events_rejected)
        shown = self.examples.setdefault(verdict.name, [])
        if len(shown) < DRY_RUN_EXAMPLES:
            shown.append((letter, verdict))
