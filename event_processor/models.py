"""The data contract: decode and validate a sensor submission, build the output records.

Bad input is data, not an exception: `parse_submission` returns either a `Submission` (with
its accepted events and its rejected ones) or a `Rejection` for the whole message. Nothing
here raises on any input; the property tests in tests/unit hold it to that.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import orjson

from event_processor import constants


class Reason(StrEnum):
    """Why something was rejected; a bounded set, so it is safe as a metric label."""

    # The whole submission.
    INVALID_BODY = "invalid_body"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    INVALID_EVENT_LIST = "invalid_event_list"
    # One event.
    EVENT_NOT_AN_OBJECT = "event_not_an_object"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    RECORD_TOO_LARGE = "record_too_large"


class EventType(StrEnum):
    NEW_PROCESS = "new_process"
    NETWORK_CONNECTION = "network_connection"


class PartitionKey(StrEnum):
    DEVICE_ID = "device_id"
    SUBMISSION_ID = "submission_id"


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    field: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    sequence: int
    event_type: str
    event: Any  # the raw JSON value, as sent
    rejection: Rejection


@dataclass(frozen=True, slots=True)
class Event:
    sequence: int
    event_type: EventType
    data: dict[str, Any]  # only the validated fields: unknown ones are dropped


@dataclass(slots=True)
class Submission:
    submission_id: str
    device_id: str
    time_created: str
    events: list[Event] = field(default_factory=list)
    rejected: list[RejectedEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Record:
    """One Kinesis record, ready to send: its bytes are final."""

    data: bytes
    partition_key: str
    sequence: int
    event_type: EventType

    @property
    def size(self) -> int:
        # Kinesis counts data plus partition key toward both the record and request limits.
        return len(self.data) + len(self.partition_key.encode())


# Canonical 8-4-4-4-12 form only; uuid.UUID() would also take braces, urns and bare hex.
_UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
# Dotted quad, decimal octets 0-255 without leading zeros. [0-9], not \d: \d admits
# non-ASCII digits (Arabic-Indic and others).
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE: Final = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_MAX_PORT: Final = 65535
# Base64 bodies may arrive line-wrapped (MIME style); whitespace is never part of the data.
_WHITESPACE: Final = {ord(c): None for c in " \t\r\n"}
_EVENT_ID_NAMESPACE: Final = uuid.UUID(constants.EVENT_ID_NAMESPACE)


def _type_name(value: Any) -> str:
    """JSON's name for a decoded value, for messages a sensor developer understands."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


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


def _uuid_field(doc: dict[str, Any], name: str) -> str | Rejection:
    if name not in doc:
        return Rejection(Reason.MISSING_FIELD, name, f"{name} is missing")
    value = doc[name]
    if not isinstance(value, str) or _UUID_RE.fullmatch(value) is None:
        return Rejection(
            Reason.INVALID_FIELD, name, f"{name} must be a UUID string, got {_type_name(value)}"
        )
    # Lower case, so that ids compare equal downstream however the sensor spelled them.
    return value.lower()


def _time_field(doc: dict[str, Any], name: str) -> str | Rejection:
    if name not in doc:
        return Rejection(Reason.MISSING_FIELD, name, f"{name} is missing")
    value = doc[name]
    if not isinstance(value, str):
        return Rejection(
            Reason.INVALID_FIELD,
            name,
            f"{name} must be an ISO 8601 string, got {_type_name(value)}",
        )
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return Rejection(Reason.INVALID_FIELD, name, f"{name} is not an ISO 8601 date-time")
    return value  # forwarded as sent: it is device local time and we do not reinterpret it


def _non_empty_str(event: dict[str, Any], name: str) -> str | Rejection:
    if name not in event:
        return Rejection(Reason.MISSING_FIELD, name, f"{name} is missing")
    value = event[name]
    if not isinstance(value, str):
        return Rejection(
            Reason.INVALID_FIELD, name, f"{name} must be a string, got {_type_name(value)}"
        )
    if not value.strip():
        return Rejection(Reason.INVALID_FIELD, name, f"{name} is empty")
    return value


def _ipv4(event: dict[str, Any], name: str) -> str | Rejection:
    if name not in event:
        return Rejection(Reason.MISSING_FIELD, name, f"{name} is missing")
    value = event[name]
    if not isinstance(value, str) or _IPV4_RE.fullmatch(value) is None:
        return Rejection(Reason.INVALID_FIELD, name, f"{name} must be a dotted IPv4 string")
    return value


def _port(event: dict[str, Any], name: str) -> int | Rejection:
    if name not in event:
        return Rejection(Reason.MISSING_FIELD, name, f"{name} is missing")
    value = event[name]
    # type() rather than isinstance(): bool is an int subclass, and `true` is not a port.
    if type(value) is not int or not 0 <= value <= _MAX_PORT:
        return Rejection(Reason.INVALID_FIELD, name, f"{name} must be an integer in 0..{_MAX_PORT}")
    return value


def _validate_new_process(event: dict[str, Any]) -> dict[str, Any] | Rejection:
    cmdl = _non_empty_str(event, "cmdl")
    if isinstance(cmdl, Rejection):
        return cmdl
    user = _non_empty_str(event, "user")
    if isinstance(user, Rejection):
        return user
    return {"cmdl": cmdl, "user": user}


def _validate_network_connection(event: dict[str, Any]) -> dict[str, Any] | Rejection:
    source_ip = _ipv4(event, "source_ip")
    if isinstance(source_ip, Rejection):
        return source_ip
    destination_ip = _ipv4(event, "destination_ip")
    if isinstance(destination_ip, Rejection):
        return destination_ip
    port = _port(event, "destination_port")
    if isinstance(port, Rejection):
        return port
    return {"source_ip": source_ip, "destination_ip": destination_ip, "destination_port": port}


_VALIDATORS: Final = {
    EventType.NEW_PROCESS: _validate_new_process,
    EventType.NETWORK_CONNECTION: _validate_network_connection,
}


def parse_submission(body: str) -> Submission | Rejection:
    """Validate one SQS message body against the input contract (see README)."""
    doc = decode_body(body)
    if isinstance(doc, Rejection):
        return doc
    if not isinstance(doc, dict):
        return Rejection(
            Reason.NOT_AN_OBJECT, None, f"top level must be an object, got {_type_name(doc)}"
        )
    submission_id = _uuid_field(doc, "submission_id")
    if isinstance(submission_id, Rejection):
        return submission_id
    device_id = _uuid_field(doc, "device_id")
    if isinstance(device_id, Rejection):
        return device_id
    time_created = _time_field(doc, "time_created")
    if isinstance(time_created, Rejection):
        return time_created
    if "events" not in doc:
        return Rejection(Reason.MISSING_FIELD, "events", "events is missing")
    events = doc["events"]
    if not isinstance(events, dict):
        return Rejection(
            Reason.INVALID_FIELD, "events", f"events must be an object, got {_type_name(events)}"
        )
    # A known type that is not a list is a malformed submission, not one bad event:
    # check them all before accepting anything, so the whole message is rejected cleanly.
    for name, items in events.items():
        if name in _VALIDATORS and not isinstance(items, list):
            return Rejection(
                Reason.INVALID_EVENT_LIST,
                name,
                f"events.{name} must be an array, got {_type_name(items)}",
            )

    submission = Submission(submission_id, device_id, time_created)
    # `sequence` counts every event in body order (types as they appear, then list order),
    # rejected ones included, so rejected events leave gaps and ids stay stable.
    sequence = 0
    for name, items in events.items():
        validator = _VALIDATORS.get(name)
        # An unknown type's value is still events: each list item (or a lone value) is one.
        for item in items if isinstance(items, list) else [items]:
            if validator is None:
                rejection = Rejection(
                    Reason.UNKNOWN_EVENT_TYPE, None, f"unknown event type {name[:100]!r}"
                )
            elif not isinstance(item, dict):
                rejection = Rejection(
                    Reason.EVENT_NOT_AN_OBJECT,
                    None,
                    f"event must be an object, got {_type_name(item)}",
                )
            else:
                result = validator(item)
                if isinstance(result, dict):
                    submission.events.append(Event(sequence, EventType(name), result))
                    sequence += 1
                    continue
                rejection = result
            submission.rejected.append(RejectedEvent(sequence, name, item, rejection))
            sequence += 1
    return submission


def event_id(submission_id: str, sequence: int) -> str:
    """Deterministic: a redelivered submission gets the same ids, so consumers can dedup."""
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{submission_id}:{sequence}"))


def build_records(
    submission: Submission, processed_at: str, partition_key: PartitionKey
) -> list[Record]:
    """Serialize each accepted event to its final record (output contract in the README).

    An event whose record would break Kinesis's 1 MiB limit moves to `submission.rejected`.
    """
    key = (
        submission.device_id
        if partition_key is PartitionKey.DEVICE_ID
        else submission.submission_id
    )
    key_size = len(key)  # UUIDs are ASCII: characters are bytes
    records: list[Record] = []
    for event in submission.events:
        data = orjson.dumps(
            {
                "event_id": event_id(submission.submission_id, event.sequence),
                "event_type": event.event_type,
                "device_id": submission.device_id,
                "submission_id": submission.submission_id,
                "sequence": event.sequence,
                "time_created": submission.time_created,
                "processed_at": processed_at,
                "event_data": event.data,
            }
        )
        if len(data) + key_size > constants.KINESIS_MAX_RECORD_BYTES:
            submission.rejected.append(
                RejectedEvent(
                    event.sequence,
                    event.event_type,
                    event.data,
                    Rejection(
                        Reason.RECORD_TOO_LARGE,
                        None,
                        f"record is {len(data) + key_size} bytes, over Kinesis's 1 MiB limit",
                    ),
                )
            )
            continue
        records.append(Record(data, key, event.sequence, event.event_type))
    return records


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 UTC with microseconds and a Z, e.g. 2026-11-22T10:00:00.123456Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
