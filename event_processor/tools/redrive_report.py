"""`dlq redrive`'s words: its summary as text and as one JSON object (`--json`; keys
documented in docs/operations.md), its progress line, and a dry run's line per letter."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from event_processor.tools import peek
from event_processor.tools.dead_letters import Letter
from event_processor.tools.recheck import PUBLISH, Verdict
from event_processor.tools.tally import (
    SETTLE_MAX_S,
    SETTLED_TIMEOUT,
    SETTLED_UNTAKEN,
    RedriveSummary,
)
from event_processor.tools.text import body_preview, counts, plural, preview

# Characters of a body in a dry run's lines.
DRY_RUN_PREVIEW_CHARS = 100
# What the summary says of how the wait for the daemon ended (`RedriveSummary.settled`).
SETTLE_NOTES = {
    SETTLED_UNTAKEN: "nothing took the moved submissions from the source queue while this ran"
    " (is the daemon running?); those rejected again later are not counted here",
    SETTLED_TIMEOUT: f"the source queue was still busy {SETTLE_MAX_S:g} s after the scan; moved"
    " submissions rejected again later are not counted here",
}


def progress_line(summary: RedriveSummary) -> str:
    """The running totals, one line (stderr, every PROGRESS_EVERY_S)."""
    if summary.dry_run:
        return (
            f"dry run: read {summary.read} of ~{summary.approximate_at_start}: would move"
            f" {summary.moved}, skipped {summary.skipped}"
        )
    return (
        f"redrive: read {summary.read} of ~{summary.approximate_at_start}: moved {summary.moved},"
        f" rejected again {summary.rejected_again.total()}, skipped {summary.skipped},"
        f" failed {summary.failed}"
    )


def dry_run_line(letter: Letter, verdict: Verdict) -> str:
    """A letter's verdict and decoded body, one line (the rejection's detail names no secret)."""
    if verdict.rejection is not None:
        said = f"{verdict.name}: {preview(verdict.rejection.detail, DRY_RUN_PREVIEW_CHARS)}"
    elif verdict.events_rejected:
        said = f"publish, with rejected events ({counts(verdict.events_rejected)})"
    else:
        said = "publish"
    return f"{said}; body: {body_preview(letter.body, DRY_RUN_PREVIEW_CHARS)}"


def text(summary: RedriveSummary) -> str:
    """The summary for a terminal: the counts, then what needs a person's attention."""
    verb = "would move" if summary.dry_run else "moved"
    parts = []
    if summary.skipped_events:
        parts.append(
            f"{plural(summary.skipped_events, 'event letter')} listing"
            f" {plural(summary.skipped_event_count, 'rejected event')} (not submissions)"
        )
    if summary.skipped_other:
        parts.append(f"other reasons ({counts(summary.skipped_other)})")
    detail = f" [{'; '.join(parts)}]" if parts else ""
    head = "dry run, nothing changed: " if summary.dry_run else ""
    lines = [
        f"{head}{verb} {summary.moved}, skipped {summary.skipped}{detail}, failed {summary.failed}"
    ]
    if summary.dry_run and summary.check is not None:
        lines.append(_verdicts_line(summary))
    if summary.rejected_again:
        lines.append(
            f"rejected again: {summary.rejected_again.total()}"
            f" ({counts(summary.rejected_again)}): the daemon dead-lettered them again after"
            " this run moved them, so the cause is not fixed; they are left in the DLQ"
        )
    if summary.rejected_again_letters:
        lines.append(
            f"moved submissions published with rejected events:"
            f" {plural(summary.rejected_again_letters, 'event letter')} listing"
            f" {plural(summary.rejected_again_events, 'rejected event')}, left in the DLQ"
        )
    if summary.arrived:
        lines.append(
            f"arrived after the start: {plural(summary.arrived, 'letter')}, not moved (a later"
            " run takes them)"
        )
    if summary.held_back:
        lines.append(
            f"held back: {plural(summary.held_back, 'letter')} behind a letter of their message"
            " group that failed to move, left in the DLQ in order (nothing overtakes a"
            " failure; run again)"
        )
    lines += _notes(summary)
    if summary.dry_run:
        for verdict, shown in summary.examples.items():
            lines.append(f"examples ({_verdict_text(verdict)}):")
            lines += [
                f"  {letter.message_id} (reason={letter.reason}): {dry_run_line(letter, said)}"
                for letter, said in shown
            ]
    return "\n".join(lines)


def _verdicts_line(summary: RedriveSummary) -> str:
    published = summary.verdicts[PUBLISH]
    rejected = Counter({k: n for k, n in summary.verdicts.items() if k != PUBLISH})
    events = ""
    if summary.events_rejected:
        events = (
            f" (with {plural(summary.events_rejected.total(), 'rejected event')}:"
            f" {counts(summary.events_rejected)})"
        )
    again = f" ({counts(rejected)})" if rejected else ""
    return (
        f"checked against the current contract ({summary.check}): would publish"
        f" {published}{events}, would be rejected again {rejected.total()}{again}"
    )


def _notes(summary: RedriveSummary) -> list[str]:
    """Why the counts may be short of the DLQ, at most one reason, then how it ended."""
    lines = []
    ended = not summary.interrupted and not summary.aborted
    if summary.limited:
        head = "a SAMPLE: the dry run stopped" if summary.dry_run else "stopped"
        lines.append(
            f"NOTE: {head} at --max {summary.moved} after reading {summary.read} of"
            f" ~{summary.approximate_at_start} messages; the DLQ holds more to move"
        )
    elif summary.unreachable and summary.complete and ended:
        lines.append(
            f"NOTE: ~{summary.unreachable} letters sent after the start (letters rejected again"
            " among them, then not counted) were not read: in a FIFO DLQ they are behind 10"
            " letters of their message group that this run holds (docs/operations.md, FIFO"
            " queues)"
        )
    elif summary.unreachable and ended:
        behind = (
            "the first 10 letters of their message group (a dry run deletes nothing)"
            if summary.dry_run
            else "10 or more letters of their message group that this run does not move"
            " (event letters, other reasons)"
        )
        lines.append(
            f"NOTE: ~{summary.unreachable} letters not read: in a FIFO DLQ they are behind"
            f" {behind}, and SQS returns no later letter of a group past held ones"
            " (docs/operations.md, FIFO queues)"
        )
    elif not summary.complete and ended:
        lines.append(
            f"NOTE: stopped early: {peek.PEEK_IDLE_RECEIVES} receives in a row brought only"
            " letters already read (their hold ran out); it may have missed some"
        )
    if summary.settled in SETTLE_NOTES:
        lines.append(f"NOTE: {SETTLE_NOTES[summary.settled]}")
    if summary.interrupted:
        lines.append(
            f"interrupted: ~{summary.left} letters from before the start not looked at (SQS's"
            " approximate count at the start minus those read); run again to go on"
        )
    if summary.aborted:
        lines.append(f"aborted: {summary.aborted}")
    return lines


def as_json(summary: RedriveSummary) -> dict[str, Any]:
    """The summary as one JSON object (`--json`; keys documented in docs/operations.md)."""
    rejected = {k: n for k, n in summary.verdicts.items() if k != PUBLISH}
    return {
        "dry_run": summary.dry_run,
        "start_sent_by": None if summary.start is None else _iso_ms(summary.start.sent_by_ms),
        "approximate_at_start": summary.approximate_at_start,
        "read": summary.read,
        "moved": summary.moved,
        "failed": summary.failed,
        "skipped": summary.skipped,
        "skipped_event_letters": summary.skipped_events,
        "skipped_events": summary.skipped_event_count,
        "skipped_by_reason": dict(summary.skipped_other),
        "rejected_again": summary.rejected_again.total(),
        "rejected_again_by_reason": dict(summary.rejected_again),
        "rejected_again_event_letters": summary.rejected_again_letters,
        "rejected_again_events": summary.rejected_again_events,
        "arrived_after_start": summary.arrived,
        "held_back": summary.held_back,
        "unreachable": summary.unreachable,
        "check": None
        if not summary.dry_run
        else {
            "signatures": summary.check,
            "would_publish": summary.verdicts[PUBLISH],
            "would_publish_events_rejected": dict(summary.events_rejected),
            "would_be_rejected_again": sum(rejected.values()),
            "would_be_rejected_again_by_reason": rejected,
        },
        "limited": summary.limited,
        "complete": summary.complete,
        "settled": summary.settled,
        "interrupted": summary.interrupted,
        "left": summary.left,
        "aborted": summary.aborted,
    }


def _verdict_text(verdict: str) -> str:
    return "would publish" if verdict == PUBLISH else f"would be rejected again: {verdict}"


def _iso_ms(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat(timespec="seconds")
