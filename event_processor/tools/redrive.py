"""`dlq redrive`: move rejected submissions from the DLQ back to the source queue, each
deleted from the DLQ only after it was sent (docs/operations.md).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from event_processor import constants, exitcodes, signals
from event_processor.config import Settings
from event_processor.letters import KIND_EVENTS
from event_processor.tools import aws, peek
from event_processor.tools.args import positive_float, positive_int
from event_processor.tools.dead_letters import Letter
from event_processor.tools.text import plural, preview

# A received message is hidden this long (plus the pacing wait) while it is being moved; if the
# tool dies, SQS shows it again after that. Messages not moved are released at the end anyway.
REDRIVE_HOLD_S = 30
# Long poll of a redrive receive: an empty long poll means nothing visible is left.
REDRIVE_WAIT_S = 1


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

    @property
    def longest_wait_s(self) -> float:
        """The longest `wait` for one batch can block."""
        return 0.0 if self.rate is None else self.batch_size / self.rate

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


@dataclass
class RedriveSummary:
    dry_run: bool
    moved: int = 0  # sent to the source queue and deleted from the DLQ (dry run: would move)
    skipped_events: int = 0  # event letters: not submissions, never moved
    skipped_event_count: int = 0  # the rejected events those letters list
    skipped_other: Counter[str] = field(default_factory=Counter)  # reason -> not chosen
    failed: int = 0
    read: int = 0
    approximate_visible: int = 0
    limited: bool = False  # dry run: --max stopped the scan, with more to move behind it
    complete: bool = True  # dry run: the scan reached the end of the DLQ (or --max)
    interrupted: bool = False
    aborted: str | None = None

    @property
    def skipped(self) -> int:
        return self.skipped_events + sum(self.skipped_other.values())

    def skip_events(self, letter: Letter) -> None:
        """Count an event letter as skipped, with the rejected events it lists."""
        self.skipped_events += 1
        self.skipped_event_count += 0 if letter.events is None else letter.events.count

    def text(self) -> str:
        verb = "would move" if self.dry_run else "moved"
        parts = []
        if self.skipped_events:
            parts.append(
                f"{plural(self.skipped_events, 'event letter')} listing"
                f" {plural(self.skipped_event_count, 'rejected event')} (not submissions)"
            )
        if self.skipped_other:
            other = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped_other.items()))
            parts.append(f"other reasons ({other})")
        detail = f" [{'; '.join(parts)}]" if parts else ""
        head = "dry run, nothing changed: " if self.dry_run else ""
        lines = [f"{head}{verb} {self.moved}, skipped {self.skipped}{detail}, failed {self.failed}"]
        if self.dry_run and self.limited:
            lines.append(
                f"NOTE: a SAMPLE: the dry run stopped at --max {self.moved} after reading"
                f" {self.read} of ~{self.approximate_visible} messages; the DLQ holds more to move"
            )
        elif self.dry_run and not self.complete and not self.interrupted:
            lines.append(
                f"NOTE: the dry run stopped early: {peek.PEEK_IDLE_RECEIVES} receives in a row"
                " brought only messages already read (their hold ran out); it may have missed some"
            )
        if self.interrupted:
            lines.append("interrupted: stopped before the DLQ was done; run again to go on")
        if self.aborted:
            lines.append(f"aborted: {self.aborted}")
        return "\n".join(lines)


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
    soon as the scan ends, also on errors and Ctrl-C; if the tool dies, SQS shows them again
    after the hold.
    """

    def __init__(
        self,
        sqs: Any,
        dlq_url: str,
        queue_url: str,
        *,
        reason: str | None,
        max_messages: int | None,
        pacer: Pacer,
        out: TextIO,
        err: TextIO,
    ) -> None:
        self.sqs = sqs
        self.dlq_url = dlq_url
        self.queue_url = queue_url
        self.reason = reason
        self.max_messages = max_messages
        self.pacer = pacer
        self.out = out
        self.err = err
        self.summary = RedriveSummary(dry_run=False)
        # Message id -> latest receipt handle of every message received and not deleted: all
        # are released at the end.
        self.held: dict[str, str] = {}
        self.seen: set[str] = set()

    def remaining(self) -> int | None:
        if self.max_messages is None:
            return None
        return self.max_messages - self.summary.moved - self.summary.failed

    def run(self, stop: threading.Event) -> RedriveSummary:
        hold_s = min(
            REDRIVE_HOLD_S + int(self.pacer.longest_wait_s) + 1, constants.SQS_MAX_VISIBILITY_S
        )
        try:
            while (left := self.remaining()) is None or left > 0:
                if stop.is_set():
                    self.summary.interrupted = True
                    break
                count = self.pacer.batch_size if left is None else min(self.pacer.batch_size, left)
                messages = peek.receive(
                    self.sqs, self.dlq_url, count=count, visibility_s=hold_s, wait_s=REDRIVE_WAIT_S
                )
                if not messages:
                    break  # an empty long poll: nothing visible is left
                chosen = self.sort(messages, left)
                if not chosen:
                    continue
                if not self.pacer.wait(len(chosen)):
                    self.summary.interrupted = True
                    break
                self.pacer.sent(len(chosen))
                for batch in _size_batches(chosen):
                    self.move(batch)
        except (ClientError, BotoCoreError) as exc:
            self.summary.aborted = f"{type(exc).__name__}: {exc}"
        finally:
            self.release()
        return self.summary

    def sort(self, messages: list[dict[str, Any]], left: int | None) -> list[Letter]:
        """The letters to move now. Every message received is held until deleted or released."""
        chosen: list[Letter] = []
        for message in messages:
            letter = Letter.from_message(message)
            if letter.message_id in self.seen:
                # Seen already (its hold ran out during a long run): hidden again by this
                # receive; keep the newest receipt handle for the release.
                self.held[letter.message_id] = letter.receipt_handle
                continue
            self.seen.add(letter.message_id)
            self.held[letter.message_id] = letter.receipt_handle
            why = _chosen(letter, self.reason)
            if why is None and left is not None and len(chosen) >= left:
                self.seen.discard(letter.message_id)  # beyond --max: not looked at, released
                continue
            self.summary.read += 1
            if why == "event":
                self.summary.skip_events(letter)
            elif why == "reason":
                self.summary.skipped_other[letter.reason] += 1
            else:
                chosen.append(letter)
        return chosen

    def fail(self, letter: Letter, why: str) -> None:
        self.summary.failed += 1
        print(f"FAILED {letter.message_id} reason={letter.reason}: {why}", file=self.err)

    def move(self, letters: list[Letter]) -> None:
        """Send to the source queue; delete from the DLQ only what was sent."""
        by_id = {str(i): letter for i, letter in enumerate(letters)}
        try:
            response = self.sqs.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {
                        "Id": entry_id,
                        "MessageBody": letter.body,
                        "MessageAttributes": letter.original_attributes(),
                    }
                    for entry_id, letter in by_id.items()
                ],
            )
        except (ClientError, BotoCoreError) as exc:
            for letter in letters:
                self.fail(letter, f"not sent ({type(exc).__name__}), kept in the DLQ")
            raise
        sent: dict[str, str] = {}  # entry id -> new message id
        for entry in response.get("Successful", []):
            sent[entry["Id"]] = entry["MessageId"]
        failed = {entry["Id"]: entry for entry in response.get("Failed", [])}
        for entry_id, letter in by_id.items():
            if entry_id not in sent:
                why = peek.error_text(failed.get(entry_id, {"Code": "NoResultForEntry"}))
                self.fail(letter, f"not sent ({why}), kept in the DLQ")
        if sent:
            self.delete({entry_id: by_id[entry_id] for entry_id in sent}, sent)

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
    *,
    reason: str | None,
    max_messages: int | None,
    out: TextIO,
    err: TextIO,
    stop: threading.Event,
) -> RedriveSummary:
    """Peek at the whole DLQ as `inspect` does (hidden page by page, all released at the end)."""
    summary = RedriveSummary(dry_run=True)
    summary.approximate_visible, _ = aws.queue_counts(sqs, dlq_url)
    with peek.peek(sqs, dlq_url, stop=stop, err=err) as scan:
        for letter in scan:
            why = _chosen(letter, reason)
            if why is None and max_messages is not None and summary.moved >= max_messages:
                # One more to move than --max allows: the real run would stop before it.
                summary.limited = True
                break
            summary.read += 1
            if why == "event":
                summary.skip_events(letter)
            elif why == "reason":
                summary.skipped_other[letter.reason] += 1
            else:
                summary.moved += 1
                print(
                    f"would move {letter.message_id} reason={letter.reason}:"
                    f" {preview(letter.body, 80)}",
                    file=out,
                )
    summary.complete = scan.complete or summary.limited
    summary.interrupted = scan.interrupted
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
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stop: threading.Event | None = None,
    clock: aws.Clock = time.monotonic,
) -> RedriveSummary:
    """Move rejected submissions (of `reason`, if given) from the DLQ back to the source queue.

    Each message is deleted from the DLQ only after SendMessageBatch reported its entry sent;
    event letters are never moved (they are not submissions): the summary counts them and the
    rejected events they list. With `dry_run` the DLQ is only peeked at (`peek.peek`: paged
    through, every message made visible again at the end) and nothing changes.
    """
    if queue_url == dlq_url:
        raise ValueError("the source queue and the DLQ are the same queue")
    stop = threading.Event() if stop is None else stop
    if dry_run:
        return _dry_run(
            sqs, dlq_url, reason=reason, max_messages=max_messages, out=out, err=err, stop=stop
        )
    pacer = Pacer(rate, stop, clock)
    run = _Redrive(
        sqs,
        dlq_url,
        queue_url,
        reason=reason,
        max_messages=max_messages,
        pacer=pacer,
        out=out,
        err=err,
    )
    return run.run(stop)


# --------------------------------------------------------------------------------------------
# CLI


def register(dlq_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = dlq_commands.add_parser(
        "redrive",
        help="move rejected submissions from the DLQ back to the source queue",
        description="Move rejected submissions back to the source queue, deleting each from "
        "the DLQ only after it was sent. Rejected-event letters are not submissions and are "
        "never moved. Reason `none` means messages SQS's redrive policy moved.",
    )
    aws.add_flags(parser, "dlq_url", "queue_url", "queue_name")
    parser.add_argument("--reason", default=None, help="move only messages with this reason")
    parser.add_argument(
        "--rate", type=positive_float, default=None, help="at most N messages per second"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would move; change nothing"
    )
    parser.add_argument("--max", type=positive_int, default=None, help="move at most N messages")
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
    print(
        f"{'dry run: ' if args.dry_run else ''}redrive {dlq_url} -> {queue_url}"
        f" (reason: {args.reason or 'any'}, rate: {args.rate or 'unlimited'} msgs/s,"
        f" max: {args.max or 'all'})",
        file=out,
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
                out=out,
                stop=stop,
            )
        except (ClientError, BotoCoreError) as exc:  # a dry run's receive failed
            print(f"redrive failed: {exc}", file=sys.stderr)
            return exitcodes.FAILED
        except KeyboardInterrupt:  # a second signal: held messages were released on the way
            print("interrupted", file=sys.stderr)
            return exitcodes.INTERRUPTED
    print(summary.text(), file=out)
    if summary.interrupted:
        return exitcodes.INTERRUPTED
    return exitcodes.FAILED if summary.failed or summary.aborted else exitcodes.OK
