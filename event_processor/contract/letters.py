"""The dead-letter format: the one writer and the one reader of what the DLQ holds.

A rejected submission goes with its original body and message attributes, plus `reason`,
`detail`, `source_message_id` and `receive_count`. The rejected events of a valid submission
are packed into as few JSON letters as the DLQ's MaximumMessageSize allows. The daemon
(`dlq`) writes with it; the operator tools read with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from event_processor import constants
from event_processor.contract.parse import Rejection
from event_processor.contract.signing import SIGNATURE_ATTRIBUTE

if TYPE_CHECKING:
    from types_aiobotocore_sqs.type_defs import MessageAttributeValueTypeDef

    from event_processor.pipeline.source import Message

# SQS allows 10 message attributes; ours take 4, the original message's may fill the rest.
_MAX_ATTRIBUTES = 10
# A rejected event's own JSON is cut to a preview beyond this, so that the dead letter
# itself always fits in an SQS message (attributes and envelope need the rest).
_EVENT_PREVIEW_CHARS = 64 * 1024
# Levels of nesting kept of an event too deep to encode whole.
_MAX_DEPTH = 32
# Dead-letter kinds: the dlq_messages_sent label.
KIND_SUBMISSION = "submission"
KIND_EVENTS = "event"


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


def _reason_attributes(message: Message, reason: str, detail: str) -> dict[str, Any]:
    detail = detail[: constants.DLQ_DETAIL_MAX_CHARS] or "-"  # SQS refuses ""
    return {
        "reason": _string(reason),
        "detail": _string(detail),
        "source_message_id": _string(message.message_id),
        "receive_count": {"DataType": "Number", "StringValue": str(message.receive_count)},
    }


def _event_json(event: Any) -> tuple[str, bool]:
    """The event as ASCII JSON, and whether it had to be cut.

    ensure_ascii: SQS refuses some code points (U+FFFE, lone surrogates) in bodies; escaped,
    every string an event can hold is a valid SQS body. An event nested deeper than the
    encoder's recursion allows (orjson parses 1,024 levels) is cut at _MAX_DEPTH levels.
    """
    try:
        return json.dumps(event, ensure_ascii=True), False
    except RecursionError:
        return json.dumps(_cut(event, _MAX_DEPTH), ensure_ascii=True), True


def _cut(value: Any, depth: int) -> Any:
    if not isinstance(value, list | dict):
        return value
    if depth == 0:
        return "...(nested deeper, cut)"
    if isinstance(value, list):
        return [_cut(v, depth - 1) for v in value]
    return {k: _cut(v, depth - 1) for k, v in value.items()}


def submission_letter(message: Message, body: str, rejection: Rejection) -> DeadLetter:
    """The original body and attributes, with the reason added as attributes.

    The sender's signature goes first among the original's: a redriven body needs it to be
    accepted again where AUTH_MODE enforces signatures.
    """
    attributes = _reason_attributes(message, rejection.reason.value, rejection.detail)
    signature = message.attributes.get(SIGNATURE_ATTRIBUTE)
    if signature is not None:
        attributes[SIGNATURE_ATTRIBUTE] = signature
    for name, value in message.attributes.items():
        if len(attributes) >= _MAX_ATTRIBUTES:
            break  # ours take precedence; SQS would refuse an 11th attribute
        if name not in attributes:
            attributes[name] = value
    return DeadLetter(
        KIND_SUBMISSION, body, attributes, message.group_id, f"{message.message_id}:submission"
    )


# --- Packed letters of rejected events (docs/contract.md, "Dead letters") -----------------
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
# What a group costs in memory beyond its text: its object, two bytearrays, its key tuple and
# dict entries (measured with tracemalloc: ~510 bytes a group of one event, all told).
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
class PackedLetter:
    submission_id: str
    device_id: str
    source_message_id: str
    part: int
    parts: int
    events: list[RejectedEventEntry]


def _encode_event(event: Any) -> tuple[str, bool]:
    """The event as ASCII JSON, and whether it had to be cut for depth."""
    encoded = _fast_json(event)
    if encoded is not None:
        return encoded, False
    return _event_json(event)


def _fast_json(value: Any) -> str | None:
    # orjson is ~10x the stdlib per event; its output is UTF-8, so non-ASCII falls back.
    try:
        raw = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return None  # deeper than orjson encodes, or an integer beyond 64 bits
    return raw.decode() if raw.isascii() else None


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
        self.groups: dict[tuple[str, str, str | None, str, bool], _Group] = {}
        self.size = size
        self.count = 0
        self.reasons: set[str] = set()


class LetterPacker:
    """Packs a submission's rejected events into as few letters as the DLQ's size allows.

    Each event is encoded as it is handed in and the decoded value is not kept, so what a
    hostile body costs here is its rejected events' JSON plus a few bytes each, not objects.
    """

    def __init__(self, message: Message, max_message_bytes: int) -> None:
        self._message = message
        self._max_body = max_message_bytes - _ATTRIBUTES_RESERVE
        self._letters: list[_Letter] = []
        self._headers: dict[tuple[str, str, str | None, str, bool], str] = {}
        self._envelope_size = 0  # measured at the first rejected event: most submissions have none
        # Rejected events by reason. A dict, not a Counter: one is made per submission, and
        # Counter() costs two Python calls where {} costs none.
        self.counts: dict[str, int] = {}
        self.nbytes = 0  # what the letters hold so far, for the memory budget

    def _envelope(
        self, submission_id: str, device_id: str, part: int, parts: int, count: int
    ) -> str:
        envelope = {
            "kind": LETTER_KIND,
            "submission_id": submission_id,
            "device_id": device_id,
            "source_message_id": self._message.message_id,
            "part": part,
            "parts": parts,
            "event_count": count,
        }
        return json.dumps(envelope, ensure_ascii=True)[:-1] + ', "groups": ['

    def _header(self, key: tuple[str, str, str | None, str, bool]) -> str:
        header = self._headers.get(key)
        if header is None:
            event_type, reason, field, detail, truncated = key
            doc: dict[str, Any] = {
                "event_type": event_type,
                "reason": reason,
                "field": field,
                "detail": detail,
            }
            if truncated:
                doc["event_truncated"] = True
            header = json.dumps(doc, ensure_ascii=True)[:-1] + ', "sequences": ['
            self._headers[key] = header
        return header

    def add(self, sequence: int, event_type: str, event: Any, rejection: Rejection) -> None:
        """Pack one rejected event (the callback `parse_packed` hands rejections to)."""
        reason = rejection.reason.value
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if not self._envelope_size:
            # Ids are UUIDs (36 characters): the envelope's size does not depend on their values.
            envelope = self._envelope(_UUID_SIZED, _UUID_SIZED, 1, 1, 0)
            self._envelope_size = len(envelope) + _ENVELOPE_SLACK
        event_json, cut = _encode_event(event)
        key = (
            event_type[:_KEY_TYPE_CHARS],
            reason,
            rejection.field,
            rejection.detail[:_KEY_DETAIL_CHARS],
            False,
        )
        header = self._header(key)
        seq = str(sequence)
        # Room for one event in an empty letter: what is left after envelope and header.
        room = self._max_body - self._envelope_size - len(header) - len(seq) - 8
        if cut or len(event_json) > min(_EVENT_PREVIEW_CHARS, room):
            key = (*key[:4], True)
            header = self._header(key)
            event_json = _preview(event_json, max(2, room - 24))
        entry_size = len(seq) + len(event_json) + 4  # and the separators
        letter = self._letters[-1] if self._letters else None
        group = letter.groups.get(key) if letter is not None else None
        cost = entry_size + (0 if group is not None else len(header) + 24)
        if letter is None or (letter.count and letter.size + cost > self._max_body):
            letter = _Letter(self._envelope_size)
            self._letters.append(letter)
            group = None
            cost = entry_size + len(header) + 24
        if group is None:
            group = letter.groups[key] = _Group(header)
            cost += _GROUP_OVERHEAD_BYTES
        else:
            group.sequences += b", "
            group.events += b", "
        group.sequences += seq.encode()
        group.events += event_json.encode()
        letter.size += cost
        letter.count += 1
        letter.reasons.add(reason)
        self.nbytes += cost

    def letters(self, submission_id: str, device_id: str) -> list[DeadLetter]:
        """The packed letters, parts 1..n; the packer is empty afterwards."""
        parts = len(self._letters)
        out: list[DeadLetter] = []
        # Each letter's parts are let go as it is written, so text and parts are not all
        # held twice at the peak.
        pending, self._letters = self._letters[::-1], []
        for part in range(1, parts + 1):
            letter = pending.pop()
            groups = ", ".join(
                f'{g.header}{g.sequences.decode()}], "events": [{g.events.decode()}]}}'
                for g in letter.groups.values()
            )
            envelope = self._envelope(submission_id, device_id, part, parts, letter.count)
            reason = next(iter(letter.reasons)) if len(letter.reasons) == 1 else MIXED_REASONS
            detail = f"{letter.count} rejected events, part {part} of {parts}"
            attributes = _reason_attributes(self._message, reason, detail)
            out.append(
                DeadLetter(
                    KIND_EVENTS,
                    envelope + groups + "]}",
                    attributes,
                    self._message.group_id,
                    f"{self._message.message_id}:events:{part}",
                )
            )
        self.nbytes = 0
        return out


def _preview(event_json: str, limit: int) -> str:
    """The first characters of an event's JSON as a JSON string no longer than `limit`."""
    cut = min(_EVENT_PREVIEW_CHARS, limit)
    preview = json.dumps(event_json[:cut], ensure_ascii=True)
    while len(preview) > limit and cut:  # escaping can lengthen what was cut
        cut //= 2
        preview = json.dumps(event_json[:cut], ensure_ascii=True)
    return preview


def read_letter(body: str) -> PackedLetter | None:
    """A packed letter's events, or None if `body` is not one (a rejected submission's body).

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
            return PackedLetter(
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
            return PackedLetter(
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


def read_event_letter(body: str, attributes: Mapping[str, Any]) -> PackedLetter | None:
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
