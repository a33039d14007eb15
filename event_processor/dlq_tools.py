"""`dlq inspect` and `dlq redrive`: count the DLQ's dead letters, and the rejected events they
list, by reason without consuming them, and move rejected submissions back to the source queue
(docs/operations.md).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from event_processor import constants, dlq
from event_processor.config import Settings
from event_processor.ops import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    AwsOptions,
    Clock,
    OpsError,
    stop_on_signals,
)

# Every function takes its clients and an output stream, so the tests drive them against the
# emulator; the `*_command` functions at the end are the CLI glue (env, clients, exit codes).
#
# Dead letters come in two kinds (README, "Dead letters"): a rejected *submission* keeps its
# original body and attributes plus ours (`reason`, `detail`, `source_message_id`,
# `receive_count`); an *event* letter lists rejected events of one valid submission, in the
# format dlq.py writes and reads (`dlq.read_letter`: packed letters, and the one-event letters
# of earlier versions). A message without a `reason` attribute was moved by SQS's own redrive
# policy (after maxReceiveCount): it is an original submission, listed under the reason `none`.

# --- Dead letters: what the daemon writes (dlq.py) ---
# The attributes the daemon adds to every dead letter; redrive strips them.
OUR_ATTRIBUTES = frozenset({"reason", "detail", "source_message_id", "receive_count"})
# The reason shown for messages without our `reason` attribute (SQS's redrive policy moved them).
NO_REASON = "none"

# --- Reading without consuming ---
# With VisibilityTimeout=0 SQS may hand out the same messages again and again (moto always
# returns the oldest ten): a peek stops after this many receives in a row brought nothing new.
PEEK_IDLE_RECEIVES = 5
# Characters of a body shown in previews.
PREVIEW_CHARS = 160
# Rejected events of an event letter shown in an example: the first ones of the example's reason.
EXAMPLE_EVENTS = 2

# --- Redrive ---
# A received message is hidden this long (plus the pacing wait) while it is being moved; if the
# tool dies, SQS shows it again after that. Messages not moved are released at the end anyway.
REDRIVE_HOLD_S = 30
# Long poll of a redrive receive: an empty long poll means nothing visible is left.
REDRIVE_WAIT_S = 1


def _string_attribute(attributes: Mapping[str, Any], name: str) -> str | None:
    value = attributes.get(name)
    if not isinstance(value, Mapping) or "StringValue" not in value:
        return None
    return str(value["StringValue"])


def read_event_letter(body: str, attributes: Mapping[str, Any]) -> dlq.PackedLetter | None:
    """The rejected events an event letter lists, or None if the message is a submission.

    A rejected submission's body is whatever the sensor sent, so an event letter is one that
    `dlq.read_letter` reads and whose `source_message_id` is that of its attribute.
    """
    source_message_id = _string_attribute(attributes, "source_message_id")
    if source_message_id is None:
        return None
    letter = dlq.read_letter(body)
    if letter is None or letter.source_message_id != source_message_id:
        return None
    return letter


def letter_kind(body: str, attributes: Mapping[str, Any]) -> str:
    """`dlq.KIND_EVENTS` for a letter of rejected events, `dlq.KIND_SUBMISSION` otherwise."""
    if read_event_letter(body, attributes) is None:
        return dlq.KIND_SUBMISSION
    return dlq.KIND_EVENTS


@dataclass(frozen=True)
class LetterEvents:
    """What an event letter lists, without keeping every event (a letter may list 10^5)."""

    submission_id: str
    device_id: str
    part: int
    parts: int
    by_reason: dict[str, int]  # rejected events by each event's own reason
    first: dict[str, tuple[dlq.RejectedEventEntry, ...]]  # the first EXAMPLE_EVENTS per reason

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    @classmethod
    def of(cls, letter: dlq.PackedLetter) -> LetterEvents:
        by_reason: Counter[str] = Counter()
        first: dict[str, list[dlq.RejectedEventEntry]] = {}
        for entry in letter.events:
            by_reason[entry.reason] += 1
            shown = first.setdefault(entry.reason, [])
            if len(shown) < EXAMPLE_EVENTS:
                shown.append(entry)
        return cls(
            letter.submission_id,
            letter.device_id,
            letter.part,
            letter.parts,
            dict(by_reason.most_common()),
            {reason: tuple(entries) for reason, entries in first.items()},
        )


@dataclass(frozen=True)
class Letter:
    """One DLQ message as received, classified."""

    message_id: str
    receipt_handle: str
    body: str
    attributes: dict[str, Any]  # MessageAttributes
    system: dict[str, str]  # Attributes: SentTimestamp, ApproximateReceiveCount...
    kind: str  # dlq.KIND_SUBMISSION or dlq.KIND_EVENTS
    reason: str  # the `reason` attribute ("mixed" for a letter of events of several reasons)
    events: LetterEvents | None  # what an event letter lists; None for a submission

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Letter:
        body = str(message.get("Body", ""))
        attributes = dict(message.get("MessageAttributes") or {})
        packed = read_event_letter(body, attributes)
        return cls(
            message_id=str(message["MessageId"]),
            receipt_handle=str(message["ReceiptHandle"]),
            body=body,
            attributes=attributes,
            system={str(k): str(v) for k, v in (message.get("Attributes") or {}).items()},
            kind=dlq.KIND_SUBMISSION if packed is None else dlq.KIND_EVENTS,
            reason=_string_attribute(attributes, "reason") or NO_REASON,
            events=None if packed is None else LetterEvents.of(packed),
        )

    def original_attributes(self) -> dict[str, dict[str, Any]]:
        """The sender's message attributes, without ours: what redrive sends back."""
        kept: dict[str, dict[str, Any]] = {}
        for name, value in self.attributes.items():
            if name in OUR_ATTRIBUTES or not isinstance(value, Mapping):
                continue
            attribute: dict[str, Any] = {"DataType": value["DataType"]}
            for part in ("StringValue", "BinaryValue"):
                if part in value:
                    attribute[part] = value[part]
            kept[name] = attribute
        return kept

    def size(self) -> int:
        """Bytes SQS counts toward a batch: the body and every attribute's name, type, value."""
        size = len(self.body.encode())
        for name, value in self.original_attributes().items():
            payload = value.get("StringValue", value.get("BinaryValue", b""))
            payload = payload.encode() if isinstance(payload, str) else payload
            size += len(name) + len(value["DataType"]) + len(payload)
        return size


# --------------------------------------------------------------------------------------------
# SQS plumbing: receive, counts, peek


def _receive(
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


def queue_counts(sqs: Any, queue_url: str) -> tuple[int, int]:
    """(ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible)."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes.get("ApproximateNumberOfMessages", 0)),
        int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
    )


def peek(sqs: Any, queue_url: str, *, idle_receives: int = PEEK_IDLE_RECEIVES) -> Iterator[Letter]:
    """Yield distinct messages received with VisibilityTimeout=0: nothing is hidden or deleted.

    Ends when `idle_receives` receives in a row brought no message not yet seen. The caller
    stops earlier by not asking for more.
    """
    seen: set[str] = set()
    idle = 0
    while idle < idle_receives:
        batch = _receive(
            sqs, queue_url, count=constants.SQS_MAX_BATCH_ENTRIES, visibility_s=0, wait_s=0
        )
        new = [m for m in batch if m["MessageId"] not in seen]
        idle = 0 if new else idle + 1
        for message in new:
            seen.add(message["MessageId"])
            yield Letter.from_message(message)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


@dataclass
class InspectReport:
    dlq_url: str
    approximate_visible: int
    approximate_not_visible: int
    max_messages: int
    read: int = 0
    # (reason attribute, kind) -> messages read; a letter of events of several reasons has the
    # reason attribute dlq.MIXED_REASONS.
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Each event's own reason -> rejected events listed in the event letters read.
    events: Counter[str] = field(default_factory=Counter)
    # submission_id of every event letter read (a submission's events may take several).
    event_submissions: set[str] = field(default_factory=set)
    # reason -> examples: submissions by their reason attribute, event letters under every
    # reason of their events (shown with their first events of that reason).
    examples: dict[str, list[Letter]] = field(default_factory=dict)

    @property
    def sample(self) -> bool:
        """True when the queue holds more than was read: the counts cover only what was read."""
        return self.approximate_visible > self.read

    def by_kind(self) -> dict[str, int]:
        """Messages read by kind."""
        kinds = Counter({dlq.KIND_SUBMISSION: 0, dlq.KIND_EVENTS: 0})
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
                -(row.by_kind.get(dlq.KIND_SUBMISSION, 0) + row.events),
                -row.messages,
                row.reason,
            ),
        )


def inspect_dlq(
    sqs: Any, dlq_url: str, *, max_messages: int = 1000, examples: int = 3
) -> InspectReport:
    """Read up to `max_messages` DLQ messages without consuming any, and count them by reason.

    Messages are counted by their `reason` attribute and kind; the rejected events that event
    letters list are counted too, by each event's own reason.
    """
    visible, not_visible = queue_counts(sqs, dlq_url)
    report = InspectReport(dlq_url, visible, not_visible, max_messages)
    for letter in peek(sqs, dlq_url):
        report.read += 1
        report.counts[letter.reason, letter.kind] += 1
        reasons = [letter.reason]
        if letter.events is not None:
            report.events.update(letter.events.by_reason)
            report.event_submissions.add(letter.events.submission_id)
            reasons = list(letter.events.by_reason)
        for reason in reasons:
            shown = report.examples.setdefault(reason, [])
            if len(shown) < examples:
                shown.append(letter)
        if report.read >= max_messages:
            break
    return report


def _preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """One line, cut at `limit` characters; control and other unprintable characters escaped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _decoded_preview(body: str, limit: int = PREVIEW_CHARS) -> str | None:
    """The start of a base64 body, decoded, if it is base64 of UTF-8 text (the fleet's format)."""
    compact = "".join(body[: limit * 2].split())
    compact = compact[: len(compact) - len(compact) % 4]
    if not compact or body.lstrip().startswith(("{", "[")):
        return None
    try:
        raw = base64.b64decode(compact, validate=True)
        # Incremental: a character cut at the end of the prefix is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(raw, final=False)
    except (binascii.Error, UnicodeDecodeError):
        return None
    return _preview(text, limit) if text else None


def _attribute_text(value: Mapping[str, Any]) -> str:
    if "StringValue" in value:
        return str(value["StringValue"])
    binary = value.get("BinaryValue", b"")
    return f"<binary, {len(binary)} bytes>"


def _sent_at(letter: Letter) -> str | None:
    millis = letter.system.get("SentTimestamp")
    if millis is None:
        return None
    return datetime.fromtimestamp(int(millis) / 1000, tz=UTC).isoformat(timespec="seconds")


def _event_preview(entry: dlq.RejectedEventEntry, limit: int = PREVIEW_CHARS) -> str:
    """The start of a rejected event's JSON (a truncated event is already the start of it)."""
    if entry.truncated and isinstance(entry.event, str):
        return _preview(entry.event, limit)
    try:
        text = json.dumps(entry.event, ensure_ascii=False)
    except RecursionError:  # the reader parsed it, the encoder may not go as deep
        return "(nested too deep to show)"
    return _preview(text, limit)


def _event_json(entry: dlq.RejectedEventEntry) -> dict[str, Any]:
    return {
        "sequence": entry.sequence,
        "event_type": _preview(entry.event_type, 80),
        "reason": entry.reason,
        "field": entry.field,
        "detail": _preview(entry.detail),
        "truncated": entry.truncated,
        "event_preview": _event_preview(entry),
    }


def _example_json(letter: Letter, reason: str) -> dict[str, Any]:
    """`letter` as an example of `reason` (for an event letter: its first events of it)."""
    example: dict[str, Any] = {
        "message_id": letter.message_id,
        "kind": letter.kind,
        "sent_at": _sent_at(letter),
        "dlq_receive_count": letter.system.get("ApproximateReceiveCount"),
        "attributes": {name: _attribute_text(v) for name, v in sorted(letter.attributes.items())},
        "body_chars": len(letter.body),
        "body_preview": _preview(letter.body),
        "decoded_preview": _decoded_preview(letter.body),
    }
    if letter.events is not None:
        events = letter.events
        example["letter"] = {
            "submission_id": events.submission_id,
            "device_id": events.device_id,
            "part": events.part,
            "parts": events.parts,
            "event_count": events.count,
            "events_by_reason": events.by_reason,
            "first_events": [_event_json(entry) for entry in events.first.get(reason, ())],
        }
    return example


def report_json(report: InspectReport) -> dict[str, Any]:
    """The report as one JSON document (`dlq inspect --json`)."""
    return {
        "dlq_url": report.dlq_url,
        "approximate_visible": report.approximate_visible,
        "approximate_not_visible": report.approximate_not_visible,
        "read": report.read,
        "max": report.max_messages,
        "sample": report.sample,
        "by_kind": report.by_kind(),
        "events": sum(report.events.values()),
        "event_submissions": len(report.event_submissions),
        "reasons": [
            {
                "reason": row.reason,
                "total": row.messages,
                "by_kind": row.by_kind,
                "events": row.events,
            }
            for row in report.by_reason()
        ],
        "examples": {
            reason: [_example_json(letter, reason) for letter in letters]
            for reason, letters in report.examples.items()
        },
    }


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _event_letter_lines(events: LetterEvents, reason: str) -> list[str]:
    by_reason = ", ".join(f"{r}: {n}" for r, n in events.by_reason.items())
    lines = [
        f"      letter: part {events.part} of {events.parts} of submission"
        f" {events.submission_id} (device {events.device_id}),"
        f" {_plural(events.count, 'rejected event')} ({by_reason})"
    ]
    first = events.first.get(reason, ())
    for entry in first:
        truncated = " (truncated)" if entry.truncated else ""
        lines.append(
            f"      event {entry.sequence} {_preview(entry.event_type, 40)}"
            f" field={entry.field or '-'}: {_preview(entry.detail, 80)}"
        )
        lines.append(f"        {_event_preview(entry)}{truncated}")
    more = events.by_reason.get(reason, 0) - len(first)
    if more > 0:
        lines.append(f"      ... and {more} more {reason} events in this letter")
    return lines


def format_report(report: InspectReport) -> str:
    """The report as text for a terminal."""
    lines = [
        f"DLQ {report.dlq_url}",
        f"  ~{report.approximate_visible} messages visible, "
        f"~{report.approximate_not_visible} in flight (approximate, from SQS)",
        f"  read {report.read} distinct messages without consuming any "
        "(VisibilityTimeout=0, nothing deleted)",
    ]
    if report.sample:
        why = (
            f"stopped at --max {report.max_messages}"
            if report.read >= report.max_messages
            else f"SQS returned nothing new after {PEEK_IDLE_RECEIVES} receives in a row"
        )
        lines.append(
            f"  NOTE: the counts below are a SAMPLE: {report.read} of ~{report.approximate_visible}"
            f" messages ({why})"
        )
    if report.approximate_not_visible:
        lines.append("  (messages in flight are hidden by their receiver and not counted)")
    if not report.read:
        lines.append("  nothing to show: the DLQ looks empty")
        return "\n".join(lines)

    kinds = report.by_kind()
    lines.append(
        f"  by kind: {_plural(kinds[dlq.KIND_SUBMISSION], 'submission')},"
        f" {_plural(kinds[dlq.KIND_EVENTS], 'event letter')} (listing"
        f" {_plural(sum(report.events.values()), 'rejected event')} of"
        f" {_plural(len(report.event_submissions), 'submission')})"
    )
    rows = report.by_reason()
    width = max(len("reason"), *(len(row.reason) for row in rows))
    kind_s, kind_e = dlq.KIND_SUBMISSION, dlq.KIND_EVENTS
    lines += [
        "",
        f"  {'':<{width}}  {'messages':-^{len(kind_s) + 2 + len(kind_e) + 2 + 5}}  rejected",
        f"  {'reason':<{width}}  {kind_s:>{len(kind_s)}}  {kind_e:>5}  {'total':>5}  {'events':>8}",
    ]
    for row in rows:
        lines.append(
            f"  {row.reason:<{width}}  {row.by_kind.get(kind_s, 0):>{len(kind_s)}}"
            f"  {row.by_kind.get(kind_e, 0):>5}  {row.messages:>5}  {row.events:>8}"
        )
    if kinds[kind_e]:
        lines += [
            "  (messages by their `reason` attribute, which is `mixed` for an event letter of",
            "   several reasons; rejected events by each event's own reason)",
        ]
    shown: dict[str, str] = {}  # message id -> the reason it was first shown under
    for row in rows:
        letters = report.examples.get(row.reason, [])
        if not letters:
            continue
        lines += ["", f"  {row.reason}: {len(letters)} example(s)"]
        for letter in letters:
            if letter.events is not None and letter.message_id in shown:
                lines.append(
                    f"    - {letter.message_id}  kind={letter.kind}  (the letter shown under"
                    f" {shown[letter.message_id]})"
                )
                lines += _event_letter_lines(letter.events, row.reason)[1:]
                continue
            shown[letter.message_id] = row.reason
            example = _example_json(letter, row.reason)
            lines.append(
                f"    - {letter.message_id}  kind={letter.kind}  sent={example['sent_at']}"
                f"  dlq_receives={example['dlq_receive_count']}"
            )
            attributes = ", ".join(
                f"{name}={_preview(text, 80)}" for name, text in example["attributes"].items()
            )
            lines.append(f"      attributes: {attributes or '-'}")
            if letter.events is not None:
                lines += _event_letter_lines(letter.events, row.reason)
                continue
            lines.append(f"      body ({len(letter.body)} chars): {example['body_preview']}")
            if example["decoded_preview"] is not None:
                lines.append(f"      base64-decoded: {example['decoded_preview']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# dlq redrive


class Pacer:
    """At most `rate` messages a second: message i (from 0) goes at or after start + i / rate.

    So N messages take at least (N - 1) / rate seconds. It waits on a monotonic clock until a
    batch's last message is due, rather than sleeping a fixed time after each batch.
    """

    def __init__(
        self, rate: float | None, stop: threading.Event, clock: Clock = time.monotonic
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
                f"{_plural(self.skipped_events, 'event letter')} listing"
                f" {_plural(self.skipped_event_count, 'rejected event')} (not submissions)"
            )
        if self.skipped_other:
            other = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped_other.items()))
            parts.append(f"other reasons ({other})")
        detail = f" [{'; '.join(parts)}]" if parts else ""
        head = "dry run, nothing changed: " if self.dry_run else ""
        lines = [f"{head}{verb} {self.moved}, skipped {self.skipped}{detail}, failed {self.failed}"]
        if self.dry_run and self.approximate_visible > self.read:
            lines.append(
                f"NOTE: the dry run read {self.read} of ~{self.approximate_visible} messages"
                " (SQS hands out a sample when nothing is hidden); the real run may move more"
            )
        if self.interrupted:
            lines.append("interrupted: stopped before the DLQ was done; run again to go on")
        if self.aborted:
            lines.append(f"aborted: {self.aborted}")
        return "\n".join(lines)


def _chosen(letter: Letter, reason: str | None) -> str | None:
    """Why `letter` is not moved, or None if it is."""
    if letter.kind == dlq.KIND_EVENTS:
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


def _error_text(error: Mapping[str, Any]) -> str:
    return f"{error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": ")


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
                messages = _receive(
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
                why = _error_text(failed.get(entry_id, {"Code": "NoResultForEntry"}))
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
                why = _error_text(failed.get(entry_id, {"Code": "NoResultForEntry"}))
                self.fail(letter, self.duplicate(new_ids[entry_id], why))

    @staticmethod
    def duplicate(new_id: str, why: str) -> str:
        return f"sent as {new_id} but not deleted from the DLQ ({why}): it is now in both queues"

    def release(self) -> None:
        """Make every held message visible again at once."""
        handles = list(self.held.items())
        self.held = {}
        for chunk in _chunks(handles, constants.SQS_MAX_BATCH_ENTRIES):
            entries = [
                {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                for i, (_, handle) in enumerate(chunk)
            ]
            try:
                response = self.sqs.change_message_visibility_batch(
                    QueueUrl=self.dlq_url, Entries=entries
                )
            except (ClientError, BotoCoreError) as exc:
                print(
                    f"warning: could not release {len(entries)} messages ({exc}); SQS shows them"
                    " again when their hold runs out",
                    file=self.err,
                )
                continue
            for entry in response.get("Failed", []):
                message_id = chunk[int(entry["Id"])][0]
                print(
                    f"warning: could not release {message_id} ({_error_text(entry)}); SQS shows"
                    " it again when its hold runs out",
                    file=self.err,
                )


def _dry_run(
    sqs: Any, dlq_url: str, *, reason: str | None, max_messages: int | None, out: TextIO
) -> RedriveSummary:
    summary = RedriveSummary(dry_run=True)
    summary.approximate_visible, _ = queue_counts(sqs, dlq_url)
    for letter in peek(sqs, dlq_url):
        summary.read += 1
        why = _chosen(letter, reason)
        if why == "event":
            summary.skip_events(letter)
        elif why == "reason":
            summary.skipped_other[letter.reason] += 1
        else:
            summary.moved += 1
            print(
                f"would move {letter.message_id} reason={letter.reason}: {_preview(letter.body, 80)}",
                file=out,
            )
            if max_messages is not None and summary.moved >= max_messages:
                break
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
    clock: Clock = time.monotonic,
) -> RedriveSummary:
    """Move rejected submissions (of `reason`, if given) from the DLQ back to the source queue.

    Each message is deleted from the DLQ only after SendMessageBatch reported its entry sent;
    event letters are never moved (they are not submissions): the summary counts them and the
    rejected events they list. With `dry_run` the DLQ
    is only peeked at (VisibilityTimeout=0) and nothing changes.
    """
    if queue_url == dlq_url:
        raise ValueError("the source queue and the DLQ are the same queue")
    stop = threading.Event() if stop is None else stop
    if dry_run:
        return _dry_run(sqs, dlq_url, reason=reason, max_messages=max_messages, out=out)
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
# CLI glue: env, clients, signals, exit codes


@dataclass(frozen=True)
class InspectOptions:
    aws: AwsOptions
    dlq_url: str | None
    max_messages: int
    examples: int
    as_json: bool


@dataclass(frozen=True)
class RedriveOptions:
    aws: AwsOptions
    dlq_url: str | None
    queue_url: str | None
    queue_name: str | None
    reason: str | None
    rate: float | None
    dry_run: bool
    max_messages: int | None


def _dlq_url(flag: str | None) -> str | None:
    url = flag or os.environ.get("DLQ_URL")
    if not url:
        print("no DLQ: pass --dlq-url or set DLQ_URL", file=sys.stderr)
        return None
    return url


def _check_queue(sqs: Any, queue_url: str, what: str) -> None:
    try:
        sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    except (ClientError, BotoCoreError) as exc:
        raise OpsError(f"{what} {queue_url} is missing or unreachable: {exc}") from exc


def inspect_command(options: InspectOptions, out: TextIO = sys.stdout) -> int:
    dlq_url = _dlq_url(options.dlq_url)
    if dlq_url is None:
        return EXIT_USAGE
    sqs = options.aws.client("sqs")
    try:
        _check_queue(sqs, dlq_url, "DLQ")
        report = inspect_dlq(
            sqs, dlq_url, max_messages=options.max_messages, examples=options.examples
        )
    except OpsError as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ClientError, BotoCoreError) as exc:
        print(f"inspect failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if options.as_json:
        out.write(json.dumps(report_json(report), indent=2) + "\n")
    else:
        out.write(format_report(report) + "\n")
    return EXIT_OK


def _source_queue_url(sqs: Any, options: RedriveOptions) -> str:
    """As the daemon resolves it: QUEUE_URL wins, else QUEUE_NAME (default `submissions`)."""
    url = options.queue_url or os.environ.get("QUEUE_URL")
    if url:
        return url
    name = (
        options.queue_name
        or os.environ.get("QUEUE_NAME")
        or str(Settings.model_fields["queue_name"].default)
    )
    try:
        return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])
    except (ClientError, BotoCoreError) as exc:
        raise OpsError(f"source queue {name} is missing or unreachable: {exc}") from exc


def redrive_command(options: RedriveOptions, out: TextIO = sys.stdout) -> int:
    dlq_url = _dlq_url(options.dlq_url)
    if dlq_url is None:
        return EXIT_USAGE
    sqs = options.aws.client("sqs")
    try:
        queue_url = _source_queue_url(sqs, options)
        _check_queue(sqs, dlq_url, "DLQ")
        _check_queue(sqs, queue_url, "source queue")
    except OpsError as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREACHABLE
    if queue_url == dlq_url:
        print("refusing to redrive: the source queue is the DLQ", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{'dry run: ' if options.dry_run else ''}redrive {dlq_url} -> {queue_url}"
        f" (reason: {options.reason or 'any'}, rate: {options.rate or 'unlimited'} msgs/s,"
        f" max: {options.max_messages or 'all'})",
        file=out,
    )
    stop = threading.Event()
    with stop_on_signals(stop):
        try:
            summary = redrive(
                sqs,
                dlq_url,
                queue_url,
                reason=options.reason,
                rate=options.rate,
                dry_run=options.dry_run,
                max_messages=options.max_messages,
                out=out,
                stop=stop,
            )
        except (ClientError, BotoCoreError) as exc:  # a dry run's receive failed
            print(f"redrive failed: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:  # a second signal: held messages were released on the way
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
    print(summary.text(), file=out)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.failed or summary.aborted else EXIT_OK
