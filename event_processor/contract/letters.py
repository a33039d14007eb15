"""The dead-letter format: the one writer and the one reader of what the DLQ holds.

A rejected submission goes with its original body and message attributes, plus `reason`,
`detail`, `source_message_id` and `receive_count`. The rejected events of a valid submission
are packed into as few JSON letters as the DLQ's MaximumMessageSize allows. The pipeline
writes with it (`submission_letter`, `event_letters`); the operator tools read with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from event_processor import constants
from event_processor.contract.rules import Rejection
from event_processor.contract.signing import SIGNATURE_ATTRIBUTE

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import MessageAttributeValueTypeDef

    from event_processor.contract.parse import ParsedSubmission

# SQS allows 10 message attributes; ours take 4, the original message's may fill the rest.
_MAX_ATTRIBUTES = 10
# A rejected event's own JSON is cut to a preview beyond this, so that the dead letter
# itself always fits in an SQS message (attributes and envelope need the rest).
_EVENT_PREVIEW_CHARS = 64 * 1024
# Dead-letter kinds: the dlq_messages_sent label.
KIND_SUBMISSION = "submission"
KIND_EVENTS = "event"


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """What a dead letter says of the message it comes from, as plain values."""

    message_id: str
    receive_count: int
    # The message's own attributes as received: a rejected submission's letter keeps them.
    attributes: Mapping[str, Any]
    group_id: str | None = None  # its FIFO message group; None on a standard queue


@dataclass(frozen=True, slots=True)
class DeadLetter:
    kind: str  # KIND_SUBMISSION or KIND_EVENTS: the dlq_messages_sent label
    body: str
    attributes: dict[str, MessageAttributeValueTypeDef]
    # For a FIFO DLQ: the source message's group, and an id of this letter of that message
    # (its part), so that SQS drops a second send of it within its 5-minute deduplication
    # interval (a retried batch, a redelivery after a failed delete).
    group_id: str | None = None
    deduplication_id: str = ""

    @property
    def size(self) -> int:
        return message_size(self.body, self.attributes)


def message_size(body: str, attributes: Mapping[str, Any]) -> int:
    """Bytes SQS counts toward its limits: the body and every attribute's name, type, value."""
    size = len(body.encode())
    for name, value in attributes.items():
        size += len(name.encode()) + len(value["DataType"])
        size += len(str(value.get("StringValue", "")).encode())
        binary = value.get("BinaryValue")
        if isinstance(binary, bytes | bytearray):
            size += len(binary)
    return size


def _string(value: str) -> MessageAttributeValueTypeDef:
    return {"DataType": "String", "StringValue": value}


# The attributes every dead letter carries besides the sender's own; redrive strips them.
OUR_ATTRIBUTES = frozenset({"reason", "detail", "source_message_id", "receive_count"})


def _reason_attributes(source: SourceMessage, reason: str, detail: str) -> dict[str, Any]:
    detail = detail[: constants.DLQ_DETAIL_MAX_CHARS] or "-"  # SQS refuses ""
    return {
        "reason": _string(reason),
        "detail": _string(detail),
        "source_message_id": _string(source.message_id),
        "receive_count": {"DataType": "Number", "StringValue": str(source.receive_count)},
    }


def submission_letter(source: SourceMessage, body: str, rejection: Rejection) -> DeadLetter:
    """The original body and attributes, with the reason added as attributes.

    The sender's signature goes first among the original's: a redriven body needs it to be
    accepted again where AUTH_MODE enforces signatures.
    """
    attributes = _reason_attributes(source, rejection.reason.value, rejection.detail)
    signature = source.attributes.get(SIGNATURE_ATTRIBUTE)
    if signature is not None:
        attributes[SIGNATURE_ATTRIBUTE] = signature
    for name, value in source.attributes.items():
        if len(attributes) >= _MAX_ATTRIBUTES:
            break  # ours take precedence; SQS would refuse an 11th attribute
        if name not in attributes:
            attributes[name] = value
    return DeadLetter(
        KIND_SUBMISSION, body, attributes, source.group_id, f"{source.message_id}:submission"
    )


# --- Letters of rejected events (docs/contract.md, "Dead letters") ------------------------
# One letter lists many rejected events of one submission, grouped by what they share:
#   {"kind": "rejected_events", "submission_id", "device_id", "source_message_id",
#    "part", "parts", "event_count",
#    "groups": [{"event_type", "reason", "field", "detail", ["event_truncated": true,]
#                "sequences": [...], "events": [...]}]}
# `sequences[i]` is the sequence of `events[i]`. A submission's letters are parts 1..parts.
LETTER_KIND = "rejected_events"
GROUP_KEYS = ("event_type", "reason", "field", "detail")
# Bytes of a letter kept for its four attributes (names, types and values: at most ~300).
_ATTRIBUTES_RESERVE = 512
# Longest event type and detail kept in a group key: a letter must fit 1 KiB queues too.
_KEY_TYPE_CHARS = 100
_KEY_DETAIL_CHARS = 200
# A letter's envelope with the largest part numbers and count, for the size bound.
_ENVELOPE_SLACK = 64
_UUID_SIZED = "0" * 36
# What a group costs beyond its text (its object, two bytearrays, its key and dict entries),
# counted in its letter's size as a margin: changing it moves where letters split.
_GROUP_OVERHEAD_BYTES = 384
# The `reason` attribute of a letter whose events have more than one reason.
MIXED_REASONS = "mixed"


@dataclass(frozen=True, slots=True)
class RejectedEventEntry:
    """One rejected event as a letter lists it (what readers of the DLQ get back)."""

    sequence: int
    event_type: str
    reason: str
    field: str | None
    detail: str
    event: Any  # as sent; the first characters of its JSON when `truncated`
    truncated: bool


@dataclass(frozen=True, slots=True)
class EventLetter:
    """A letter of rejected events as read back: one part of its submission's letters."""

    submission_id: str
    device_id: str
    source_message_id: str
    part: int
    parts: int
    events: list[RejectedEventEntry]


# A group's key: event type, reason, field, detail (cut to _KEY_*_CHARS), and whether its
# events are previews.
_GroupKey = tuple[str, str, str | None, str, bool]


class _Group:
    __slots__ = ("events", "header", "sequences")

    def __init__(self, header: str) -> None:
        self.header = header  # '{"event_type": ..., "sequences": ['
        # Both as encoded text, ", "-separated: a few bytes per event, no object each.
        self.sequences = bytearray()
        self.events = bytearray()


class _Letter:
    __slots__ = ("count", "groups", "reasons", "size")

    def __init__(self, size: int) -> None:
        self.groups: dict[_GroupKey, _Group] = {}
        self.size = size
        self.count = 0
        self.reasons: set[str] = set()


def _envelope(
    source_message_id: str, submission_id: str, device_id: str, *, part: int, parts: int, count: int
) -> str:
    envelope = {
        "kind": LETTER_KIND,
        "submission_id": submission_id,
        "device_id": device_id,
        "source_message_id": source_message_id,
        "part": part,
        "parts": parts,
        "event_count": count,
    }
    return json.dumps(envelope, ensure_ascii=True)[:-1] + ', "groups": ['


def _group_header(key: _GroupKey) -> str:
    event_type, reason, field, detail, truncated = key
    doc: dict[str, Any] = {
        "event_type": event_type,
        "reason": reason,
        "field": field,
        "detail": detail,
    }
    if truncated:
        doc["event_truncated"] = True
    return json.dumps(doc, ensure_ascii=True)[:-1] + ', "sequences": ['


def event_letters(
    source: SourceMessage, submission: ParsedSubmission, max_message_bytes: int
) -> list[DeadLetter]:
    """A submission's rejected events in as few letters as the DLQ's size allows, parts 1..n.

    Events go into the letters in body order; within a letter, the events that share a
    group key are listed together. An event too big for a letter is listed as a preview.
    This takes the events: `submission.rejected` is empty afterwards but for its counts.
    """
    rejected = submission.rejected
    if not len(rejected):
        return []
    max_body = max_message_bytes - _ATTRIBUTES_RESERVE
    # Ids are UUIDs (36 characters): the envelope's size does not depend on their values.
    envelope_size = (
        len(_envelope(source.message_id, _UUID_SIZED, _UUID_SIZED, part=1, parts=1, count=0))
        + _ENVELOPE_SLACK
    )
    headers: dict[_GroupKey, str] = {}

    def header_of(key: _GroupKey) -> str:
        header = headers.get(key)
        if header is None:
            header = headers[key] = _group_header(key)
        return header

    # Each cause's group key, made at its first event.
    keys: list[_GroupKey | None] = [None] * len(rejected.causes)
    cut = rejected.cut
    letters: list[_Letter] = []
    letter: _Letter | None = None
    # Taken, not read: each chunk of the events' JSON is let go of once its events are in
    # their groups, so the two are not both held whole at the peak.
    for index, (sequence, cause, encoded) in enumerate(rejected.take()):
        event_json: bytes | bytearray = encoded
        key = keys[cause]
        if key is None:
            event_type, rejection = rejected.causes[cause]
            key = keys[cause] = (
                event_type[:_KEY_TYPE_CHARS],
                rejection.reason.value,
                rejection.field,
                rejection.detail[:_KEY_DETAIL_CHARS],
                False,
            )
            header_of(key)
        reason = key[1]
        header = headers[key]  # made with the key: a subscript, where a call costs more
        seq = str(sequence)
        # Room for one event in an empty letter: what is left after envelope and header.
        room = max_body - envelope_size - len(header) - len(seq) - 8
        if index in cut or len(event_json) > min(_EVENT_PREVIEW_CHARS, room):
            key = (*key[:4], True)
            header = header_of(key)
            event_json = _preview(encoded.decode(), max(2, room - 24)).encode()
        entry_size = len(seq) + len(event_json) + 4  # and the separators
        group = letter.groups.get(key) if letter is not None else None
        cost = entry_size + (0 if group is not None else len(header) + 24)
        if letter is None or (letter.count and letter.size + cost > max_body):
            letter = _Letter(envelope_size)
            letters.append(letter)
            group = None
            cost = entry_size + len(header) + 24
        if group is None:
            group = letter.groups[key] = _Group(header)
            cost += _GROUP_OVERHEAD_BYTES
        else:
            group.sequences += b", "
            group.events += b", "
        group.sequences += seq.encode()
        group.events += event_json
        letter.size += cost
        letter.count += 1
        letter.reasons.add(reason)
    return _write(source, submission.submission_id, submission.device_id, letters)


def _write(
    source: SourceMessage, submission_id: str, device_id: str, letters: list[_Letter]
) -> list[DeadLetter]:
    parts = len(letters)
    out: list[DeadLetter] = []
    # Each letter's parts are let go as it is written, so text and parts are not all held
    # twice at the peak.
    pending = letters[::-1]
    letters.clear()
    for part in range(1, parts + 1):
        letter = pending.pop()
        groups = ", ".join(
            f'{g.header}{g.sequences.decode()}], "events": [{g.events.decode()}]}}'
            for g in letter.groups.values()
        )
        envelope = _envelope(
            source.message_id, submission_id, device_id, part=part, parts=parts, count=letter.count
        )
        reason = next(iter(letter.reasons)) if len(letter.reasons) == 1 else MIXED_REASONS
        detail = f"{letter.count} rejected events, part {part} of {parts}"
        out.append(
            DeadLetter(
                KIND_EVENTS,
                envelope + groups + "]}",
                _reason_attributes(source, reason, detail),
                source.group_id,
                f"{source.message_id}:events:{part}",
            )
        )
    return out


def _preview(event_json: str, limit: int) -> str:
    """The first characters of an event's JSON as a JSON string no longer than `limit`."""
    cut = min(_EVENT_PREVIEW_CHARS, limit)
    preview = json.dumps(event_json[:cut], ensure_ascii=True)
    while len(preview) > limit and cut:  # escaping can lengthen what was cut
        cut //= 2
        preview = json.dumps(event_json[:cut], ensure_ascii=True)
    return preview


def read_letter(body: str) -> EventLetter | None:
    """An event letter's events, or None if `body` is not one (a rejected submission's body).

    Also reads the letters of earlier versions, one event each, so that a DLQ written
    before the upgrade still reads.
    """
    if not body.startswith("{"):
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # rejected bodies can be nested beyond the limit
        return None
    if not isinstance(doc, dict):
        return None
    try:
        if doc.get("kind") == LETTER_KIND:
            events = [
                RejectedEventEntry(
                    int(sequence),
                    str(group["event_type"]),
                    str(group["reason"]),
                    group["field"],
                    str(group["detail"]),
                    event,
                    bool(group.get("event_truncated", False)),
                )
                for group in doc["groups"]
                for sequence, event in zip(group["sequences"], group["events"], strict=True)
            ]
            return EventLetter(
                str(doc["submission_id"]),
                str(doc["device_id"]),
                str(doc["source_message_id"]),
                int(doc["part"]),
                int(doc["parts"]),
                events,
            )
        if _V1_KEYS.issubset(doc) and ("event" in doc or "event_preview" in doc):
            truncated = bool(doc.get("event_truncated", False))
            entry = RejectedEventEntry(
                int(doc["sequence"]),
                str(doc["event_type"]),
                str(doc["reason"]),
                doc["field"],
                str(doc["detail"]),
                doc["event_preview"] if truncated else doc.get("event"),
                truncated,
            )
            return EventLetter(
                str(doc["submission_id"]),
                str(doc["device_id"]),
                str(doc["source_message_id"]),
                1,
                1,
                [entry],
            )
    except (KeyError, TypeError, ValueError):
        return None
    return None


# The keys of the one-event letters written before packing (version 1).
_V1_KEYS = frozenset(
    {
        "reason",
        "field",
        "detail",
        "submission_id",
        "device_id",
        "sequence",
        "event_type",
        "source_message_id",
    }
)


def string_attribute(attributes: Mapping[str, Any], name: str) -> str | None:
    """A String attribute's value as received, or None."""
    value = attributes.get(name)
    if not isinstance(value, Mapping) or "StringValue" not in value:
        return None
    return str(value["StringValue"])


def read_event_letter(body: str, attributes: Mapping[str, Any]) -> EventLetter | None:
    """The rejected events a received letter lists, or None if the message is a submission.

    A rejected submission's body is whatever the sensor sent, so an event letter is one that
    `read_letter` reads and whose `source_message_id` is that of its attribute.
    """
    source_message_id = string_attribute(attributes, "source_message_id")
    if source_message_id is None:
        return None
    letter = read_letter(body)
    if letter is None or letter.source_message_id != source_message_id:
        return None
    return letter


def letter_kind(body: str, attributes: Mapping[str, Any]) -> str:
    """KIND_EVENTS for a letter of rejected events, KIND_SUBMISSION otherwise."""
    return KIND_SUBMISSION if read_event_letter(body, attributes) is None else KIND_EVENTS
