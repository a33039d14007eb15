"""`dlq inspect`'s report as text for a terminal and as one JSON document (`--json`; keys
documented in docs/operations.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from event_processor.contract.letters import KIND_EVENTS, KIND_SUBMISSION, RejectedEventEntry
from event_processor.tools import peek
from event_processor.tools.dead_letters import Letter, LetterEvents
from event_processor.tools.tally import InspectReport
from event_processor.tools.text import PREVIEW_CHARS, decoded_preview, plural, preview


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


def _event_preview(entry: RejectedEventEntry, limit: int = PREVIEW_CHARS) -> str:
    """The start of a rejected event's JSON (a truncated event is already the start of it)."""
    if entry.truncated and isinstance(entry.event, str):
        return preview(entry.event, limit)
    try:
        text = json.dumps(entry.event, ensure_ascii=False)
    except RecursionError:  # the reader parsed it, the encoder may not go as deep
        return "(nested too deep to show)"
    return preview(text, limit)


def _event_json(entry: RejectedEventEntry) -> dict[str, Any]:
    return {
        "sequence": entry.sequence,
        "event_type": preview(entry.event_type, 80),
        "reason": entry.reason,
        "field": entry.field,
        "detail": preview(entry.detail),
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
        "body_preview": preview(letter.body),
        "decoded_preview": decoded_preview(letter.body),
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


def as_json(report: InspectReport) -> dict[str, Any]:
    """The report as one JSON document (`dlq inspect --json`)."""
    return {
        "dlq_url": report.dlq_url,
        "approximate_visible": report.approximate_visible,
        "approximate_not_visible": report.approximate_not_visible,
        "read": report.read,
        "limit": report.max_messages,
        "max": report.max_messages,  # the flag's old name, kept for scripts that read it
        "sample": report.sample,
        "complete": report.complete,
        "interrupted": report.interrupted,
        "not_released": report.not_released,
        "arrived_after_start": report.arrived,
        "unreachable": report.unreachable,
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


def _event_letter_lines(events: LetterEvents, reason: str) -> list[str]:
    by_reason = ", ".join(f"{r}: {n}" for r, n in events.by_reason.items())
    lines = [
        f"      letter: part {events.part} of {events.parts} of submission"
        f" {events.submission_id} (device {events.device_id}),"
        f" {plural(events.count, 'rejected event')} ({by_reason})"
    ]
    first = events.first.get(reason, ())
    for entry in first:
        truncated = " (truncated)" if entry.truncated else ""
        lines.append(
            f"      event {entry.sequence} {preview(entry.event_type, 40)}"
            f" field={entry.field or '-'}: {preview(entry.detail, 80)}"
        )
        lines.append(f"        {_event_preview(entry)}{truncated}")
    more = events.by_reason.get(reason, 0) - len(first)
    if more > 0:
        lines.append(f"      ... and {more} more {reason} events in this letter")
    return lines


def text(report: InspectReport) -> str:
    """The report as text for a terminal."""
    lines = [
        f"DLQ {report.dlq_url}",
        f"  ~{report.approximate_visible} messages visible, "
        f"~{report.approximate_not_visible} in flight (approximate, from SQS)",
        f"  read {report.read} distinct messages without consuming any (each page hidden"
        " while the scan ran, then all released; nothing deleted)",
    ]
    if report.sample:
        lines.append(
            f"  NOTE: the counts below are a SAMPLE: {report.read} of ~{report.approximate_visible}"
            f" messages (stopped at --limit {report.max_messages})"
        )
    elif report.interrupted:
        lines.append(
            f"  NOTE: interrupted: the counts below cover only the {report.read} messages read"
        )
    elif report.unreachable and report.complete:
        lines.append(
            f"  ({plural(report.unreachable, 'message')} sent during the scan not read: behind"
            " the first 10 of their FIFO message group)"
        )
    elif report.unreachable:
        lines.append(
            f"  NOTE: ~{report.unreachable} messages not read: in a FIFO queue they are behind"
            " the first 10 of their message group, and SQS returns no later message of a group"
            " while earlier ones are held (a scan that deletes nothing reads at most 10 a group;"
            " docs/operations.md, FIFO queues)"
        )
    elif not report.complete:
        lines.append(
            f"  NOTE: the scan stopped early: {peek.PEEK_IDLE_RECEIVES} receives in a row brought"
            " only messages already read (their hold ran out); the counts may be incomplete"
        )
    if report.not_released:
        lines.append(
            f"  WARNING: {plural(report.not_released, 'message')} could not be released; SQS"
            " shows them again when their hold runs out"
        )
    if report.arrived:
        lines.append(
            f"  ({plural(report.arrived, 'message')} arrived during the scan: not counted)"
        )
    if report.approximate_not_visible:
        lines.append("  (messages in flight are hidden by their receiver and not counted)")
    if not report.read:
        lines.append("  nothing to show: the DLQ looks empty")
        return "\n".join(lines)

    kinds = report.by_kind()
    lines.append(
        f"  by kind: {plural(kinds[KIND_SUBMISSION], 'submission')},"
        f" {plural(kinds[KIND_EVENTS], 'event letter')} (listing"
        f" {plural(sum(report.events.values()), 'rejected event')} of"
        f" {plural(len(report.event_submissions), 'submission')})"
    )
    rows = report.by_reason()
    width = max(len("reason"), *(len(row.reason) for row in rows))
    kind_s, kind_e = KIND_SUBMISSION, KIND_EVENTS
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
                f"{name}={preview(text, 80)}" for name, text in example["attributes"].items()
            )
            lines.append(f"      attributes: {attributes or '-'}")
            if letter.events is not None:
                lines += _event_letter_lines(letter.events, row.reason)
                continue
            lines.append(f"      body ({len(letter.body)} chars): {example['body_preview']}")
            if example["decoded_preview"] is not None:
                lines.append(f"      base64-decoded: {example['decoded_preview']}")
    return "\n".join(lines)
