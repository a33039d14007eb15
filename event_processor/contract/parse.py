"""Parsing: decode a sensor submission, validate it through the rules, sort its events.

Bad input is data, not an exception: `parse_submission` returns either a `ParsedSubmission`
(its accepted events as records, its rejected ones compact) or a `Rejection` for the whole
message. Nothing here raises on any input; the property tests in tests/unit hold it to that.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from pydantic import ValidationError

from event_processor.contract import rules
from event_processor.contract.records import (
    AcceptedRecords,
    PartitionKey,
    RecordWriter,
    format_timestamp,
)
from event_processor.contract.rules import EventType, Header, Reason, Rejection

# Base64 bodies may arrive line-wrapped (MIME style); whitespace is never part of the data.
_WHITESPACE: Final = {ord(c): None for c in " \t\r\n"}


def decode_body(body: str) -> Any | Rejection:
    """Base64-encoded JSON (what the fleet sends) or plain JSON; anything else is rejected.

    orjson rejects invalid UTF-8, lone surrogates, NaN and nesting deeper than 1024 with a
    JSONDecodeError, so hostile bodies end here as a rejection, never as a crash.
    """
    stripped = body.strip()
    if not stripped.startswith(("{", "[")):
        try:
            raw = base64.b64decode(stripped.translate(_WHITESPACE), validate=True)
        except (binascii.Error, ValueError):
            pass  # not base64: plain JSON such as `"text"` or `42` gets a clearer reason below
        else:
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                pass  # base64-looking text can also be JSON, e.g. `1234`
    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError as exc:
        return Rejection(
            Reason.INVALID_BODY, None, f"body is neither base64-encoded JSON nor JSON: {exc}"
        )


def parse_header(body: str) -> Header | Rejection:
    """Decode the body and check everything above the events (docs/contract.md, "Input")."""
    doc = decode_body(body)
    if isinstance(doc, Rejection):
        return doc
    header: Header | Rejection = rules.check_header(doc)
    if isinstance(header, Rejection):
        return header
    # A known type that is not a list is a malformed submission, not one bad event:
    # check them all (in body order) before accepting anything, so the whole message is
    # rejected cleanly.
    for name, items in header["events"].items():
        if name in rules.EVENT_CHECKS and not isinstance(items, list):
            return Rejection(
                Reason.INVALID_EVENT_LIST,
                name,
                f"events.{name} must be an array, got {rules.json_type_name(items)}",
            )
    return header


# --- rejected events --------------------------------------------------------------------------

# Levels of nesting kept of an event too deep to encode whole.
_MAX_DEPTH: Final = 32
# What RejectedEvents keeps per event besides its JSON: its end byte, sequence and cause.
_REJECTED_EVENT_BYTES: Final = 1 + array("I").itemsize * 2
# Rejected events' JSON is kept in chunks of about this size, so that the letters taking it
# let go of it as they go (`RejectedEvents.take`) rather than all at the end.
_CHUNK_BYTES: Final = 64 * 1024
# What a cause (an event type with a rejection) costs: its tuple, dict entry and counter.
_CAUSE_BYTES: Final = 384


def _event_json(event: Any) -> tuple[bytes, bool]:
    """The event as ASCII JSON, and whether it had to be cut for depth.

    ASCII: SQS refuses some code points (U+FFFE, lone surrogates) in the bodies of the dead
    letters that carry these; escaped, every string an event can hold is valid there. orjson
    is the fast path; its output is UTF-8, so non-ASCII, integers beyond 64 bits and nesting
    deeper than it encodes take the stdlib's, which cuts what its recursion cannot encode.
    """
    try:
        raw = orjson.dumps(event)
    except (orjson.JSONEncodeError, TypeError):
        pass
    else:
        if raw.isascii():
            return raw, False
    try:
        return json.dumps(event, ensure_ascii=True).encode(), False
    except RecursionError:
        return json.dumps(_cut(event, _MAX_DEPTH), ensure_ascii=True).encode(), True


def _cut(value: Any, depth: int) -> Any:
    if not isinstance(value, list | dict):
        return value
    if depth == 0:
        return "...(nested deeper, cut)"
    if isinstance(value, list):
        return [_cut(v, depth - 1) for v in value]
    return {k: _cut(v, depth - 1) for k, v in value.items()}


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """One rejected event, decoded again (`RejectedEvents[i]`): for tests and the dev world."""

    sequence: int
    event_type: str
    event: Any  # the JSON value as sent (cut beyond _MAX_DEPTH levels)
    rejection: Rejection


class RejectedEvents:
    """A submission's rejected events, in body order, compact: each event's JSON once, and its
    cause (event type and rejection) shared with every event that has it.

    A 1 MiB body may hold ~100,000 bad events: what they cost here is their JSON plus 9 bytes
    each, never an object per event, and the decoded document is garbage once the walk ends.
    The dead-letter format (`letters.event_letters`) takes them with `take`.
    """

    __slots__ = (
        "_cause_counts",
        "_cause_index",
        "_causes_of",
        "_chunks",
        "_sequences",
        "causes",
        "cut",
    )

    def __init__(self) -> None:
        # Each event's ASCII JSON followed by a NUL, which ASCII JSON never holds.
        self._chunks: list[bytearray] = []
        # Unsigned 32 bits: a body's events are far fewer than 4 billion.
        self._sequences = array("I")
        self._causes_of = array("I")
        # Keyed by the rejection's identity: the rules hand out shared Rejection objects,
        # and `causes` keeps each one alive, so an id is never reused meanwhile.
        self._cause_index: dict[tuple[str, int], int] = {}
        self._cause_counts: list[int] = []
        self.causes: list[tuple[str, Rejection]] = []
        self.cut: set[int] = set()  # the events cut for depth (none, nearly always)

    def add(self, sequence: int, event_type: str, event: Any, rejection: Rejection) -> None:
        encoded, cut = _event_json(event)
        if cut:
            self.cut.add(len(self._sequences))
        chunks = self._chunks
        if not chunks or len(chunks[-1]) >= _CHUNK_BYTES:
            chunks.append(bytearray())
        chunk = chunks[-1]
        chunk += encoded
        chunk += b"\0"
        self._sequences.append(sequence)
        key = (event_type, id(rejection))
        cause = self._cause_index.get(key)
        if cause is None:
            cause = self._cause_index[key] = len(self.causes)
            self.causes.append((event_type, rejection))
            self._cause_counts.append(0)
        self._cause_counts[cause] += 1
        self._causes_of.append(cause)

    def __len__(self) -> int:
        return len(self._sequences)

    @property
    def nbytes(self) -> int:
        """What this holds in memory, for the budget: nothing while there is no event."""
        if not self._sequences:
            return 0
        return (
            sum(map(len, self._chunks))
            + (_REJECTED_EVENT_BYTES - 1) * len(self._sequences)
            + _CAUSE_BYTES * len(self.causes)
            + 256
        )

    @property
    def counts(self) -> dict[str, int]:
        """Rejected events by reason (the events_rejected metric's label), taken ones too."""
        counts: dict[str, int] = {}
        for (_, rejection), count in zip(self.causes, self._cause_counts, strict=True):
            reason = rejection.reason.value
            counts[reason] = counts.get(reason, 0) + count
        return counts

    def take(self) -> Iterator[tuple[int, int, bytearray]]:
        """Each event's sequence, cause (an index into `causes`) and JSON, in body order,
        letting go of the JSON as it is read: empty afterwards, but for `causes` and `counts`."""
        chunks, sequences, causes_of = self._chunks, self._sequences, self._causes_of
        self._chunks, self._sequences, self._causes_of = [], array("I"), array("I")
        self._cause_index = {}  # only the walk looks causes up
        return _entries(chunks, sequences, causes_of)

    def __iter__(self) -> Iterator[RejectedEvent]:
        entries = _entries(list(self._chunks), self._sequences, self._causes_of)
        for sequence, cause, encoded in entries:
            event_type, rejection = self.causes[cause]
            try:
                event = json.loads(encoded)
            except RecursionError:
                event = encoded.decode()  # nested deeper than the decoder goes: its JSON as text
            yield RejectedEvent(sequence, event_type, event, rejection)

    def __getitem__(self, index: int) -> RejectedEvent:
        """Event `index`, found by reading those before it (tests; the daemon only takes)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        return next(itertools.islice(self, index, None))


def _entries(
    chunks: list[bytearray], sequences: array[int], causes_of: array[int]
) -> Iterator[tuple[int, int, bytearray]]:
    """Read `chunks` in order, dropping each from the list once read."""
    chunks.reverse()
    index = 0
    while chunks:
        chunk = chunks.pop()
        start = 0
        end = chunk.find(0)
        while end >= 0:
            yield sequences[index], causes_of[index], chunk[start:end]
            index += 1
            start = end + 1
            end = chunk.find(0, start)


# --- the walk ---------------------------------------------------------------------------------

# A type's member by its name: a dict look-up, where EventType(name) runs enum's __call__.
_EVENT_TYPES: Final = {t.value: t for t in EventType}


def _walk(events: dict[str, Any], records: AcceptedRecords, rejected: RejectedEvents) -> None:
    """Validate every event in body order into `records` or `rejected`.

    `sequence` counts every event in body order (types as they appear, then list order),
    rejected ones included, so rejected events leave gaps and ids stay stable.
    """
    sequence = 0
    encode = records.writer.encode
    accept = records.append
    reject = rejected.add
    for name, items in events.items():
        check = rules.EVENT_CHECKS.get(name)
        if check is None:
            # An unknown type's value is still events: each list item (or a lone value) is one.
            unknown = Rejection(
                Reason.UNKNOWN_EVENT_TYPE, None, f"unknown event type {name[:100]!r}"
            )
            for item in items if isinstance(items, list) else [items]:
                reject(sequence, name, item, unknown)
                sequence += 1
            continue
        event_type = _EVENT_TYPES[name]
        validate = check.validate
        for item in items:
            # pydantic-core validates the event and returns only its contract's fields.
            try:
                data = validate(item)
            except ValidationError as exc:
                reject(sequence, name, item, check.rejection(exc, item))
            else:
                encoded = encode(sequence, event_type, data)
                if isinstance(encoded, Rejection):
                    reject(sequence, name, data, encoded)
                else:
                    accept(sequence, event_type, *encoded)
            sequence += 1


@dataclass(frozen=True, slots=True)
class AcceptedEvent:
    """One accepted event, decoded again (`ParsedSubmission.events`): for tests and tools."""

    sequence: int
    event_type: EventType
    data: dict[str, Any]  # only the validated fields: unknown ones are dropped


@dataclass(frozen=True, slots=True)
class ParsedSubmission:
    """A valid submission: its accepted events as records, its rejected events for letters."""

    submission_id: str
    device_id: str
    time_created: str
    records: AcceptedRecords
    rejected: RejectedEvents

    @property
    def events(self) -> list[AcceptedEvent]:
        """The accepted events, decoded again from their records' data (not the daemon's path)."""
        records = self.records
        return [
            AcceptedEvent(sequence, event_type, orjson.loads(data))
            for sequence, event_type, data in map(records.event, range(len(records)))
        ]


def parse_submission(
    body: str,
    processed_at: str | None = None,
    partition_key: PartitionKey = PartitionKey.DEVICE_ID,
) -> ParsedSubmission | Rejection:
    """Validate one SQS message body against the input contract (docs/contract.md).

    One decode, one encode per accepted event, nothing kept twice: the decoded document is
    garbage as soon as this returns. `processed_at` (default: now) goes into every record and
    so counts toward its size.
    """
    header = parse_header(body)
    if isinstance(header, Rejection):
        return header
    if processed_at is None:
        processed_at = format_timestamp(datetime.now(UTC))
    submission_id, device_id = header["submission_id"], header["device_id"]
    writer = RecordWriter(
        submission_id, device_id, header["time_created"], processed_at, partition_key
    )
    records = AcceptedRecords(writer)
    rejected = RejectedEvents()
    _walk(header["events"], records, rejected)
    return ParsedSubmission(submission_id, device_id, header["time_created"], records, rejected)
