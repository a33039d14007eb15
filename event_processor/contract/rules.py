"""The input and output contracts (docs/contract.md) as strict pydantic models.

Each rule is defined once, here, and `parse.py` validates every submission and event through
these models; `schema.py` renders them as JSON Schemas (docs/schemas/).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Generic, Literal, TypeVar, get_type_hints

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from pydantic_core import PydanticCustomError

# typing.TypedDict lacks what pydantic needs on Python < 3.12.
from typing_extensions import TypedDict


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
    # The sender, when AUTH_MODE checks it (docs/authentication.md): the whole submission.
    SIGNATURE_MISSING = "signature_missing"
    SIGNATURE_MALFORMED = "signature_malformed"
    SIGNATURE_INVALID = "signature_invalid"
    UNKNOWN_KEY = "unknown_key"
    DEVICE_MISMATCH = "device_mismatch"
    DEVICE_REVOKED = "device_revoked"


class EventType(StrEnum):
    NEW_PROCESS = "new_process"
    NETWORK_CONNECTION = "network_connection"


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    field: str | None
    detail: str


def json_type_name(value: Any) -> str:
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


# --- the rules ------------------------------------------------------------------------------


def _uuid_pattern(hex_digit: str) -> str:
    """The canonical 8-4-4-4-12 form only (uuid.UUID() would also take braces, urns, bare hex)."""
    return "-".join(f"{hex_digit}{{{n}}}" for n in (8, 4, 4, 4, 12))


# Anchored for pydantic and JSON Schema, which search rather than match. Rust's regex (what
# pydantic-core runs) has no Python-style `$` before a trailing newline: "1.2.3.4\n" fails.
UUID_PATTERN: Final = f"^{_uuid_pattern('[0-9a-fA-F]')}$"
# What we write: ids are lower-cased, so event_id does not depend on a sensor's spelling.
LOWER_UUID_PATTERN: Final = f"^{_uuid_pattern('[0-9a-f]')}$"
# Dotted quad, decimal octets 0-255 without leading zeros. [0-9], not \d: \d admits
# non-ASCII digits (Arabic-Indic and others).
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_PATTERN: Final = rf"^{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}$"
MAX_PORT: Final = 65535
# What records.format_timestamp writes: UTC, microseconds, a Z.
PROCESSED_AT_PATTERN: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$"


def _not_blank(value: str) -> str:
    # str.strip()'s whitespace, not a regex's: Rust's \s and JSON Schema's differ from it.
    if not value.strip():
        raise PydanticCustomError("blank", "the string is empty or only whitespace")
    return value


def _iso_8601(value: str) -> str:
    datetime.fromisoformat(value)  # a ValueError is pydantic's value_error
    return value  # forwarded as sent: it is device local time and we do not reinterpret it


@dataclass(frozen=True, slots=True)
class Detail:
    """A rule's words in a rejection's `detail`: for a wrong JSON type, and for a wrong value."""

    wrong_type: str
    wrong_value: str


_UUID_DETAIL: Final = "{name} must be a UUID string, got {type}"
Uuid = Annotated[
    str,
    Field(pattern=UUID_PATTERN, description="a canonical 8-4-4-4-12 UUID, either case"),
    AfterValidator(str.lower),
    Detail(_UUID_DETAIL, _UUID_DETAIL),
]
IsoTime = Annotated[
    str,
    Field(description="ISO 8601 as Python's datetime.fromisoformat reads it; forwarded as sent"),
    AfterValidator(_iso_8601),
    Detail("{name} must be an ISO 8601 string, got {type}", "{name} is not an ISO 8601 date-time"),
]
# minLength is what JSON Schema can say of the rule; it has no str.strip() for the rest.
Text = Annotated[
    str,
    Field(description="a string that is not empty or only whitespace", min_length=1),
    AfterValidator(_not_blank),
    Detail("{name} must be a string, got {type}", "{name} is empty"),
]
_IPV4_DETAIL: Final = "{name} must be a dotted IPv4 string"
Ipv4 = Annotated[
    str,
    Field(
        pattern=IPV4_PATTERN,
        description="dotted-quad IPv4: octets 0-255, no leading zeros, ASCII digits",
    ),
    Detail(_IPV4_DETAIL, _IPV4_DETAIL),
]
_PORT_DETAIL: Final = f"{{name}} must be an integer in 0..{MAX_PORT}"
Port = Annotated[
    int,
    Field(ge=0, le=MAX_PORT, description="a JSON integer: 443.0, '443' and true are invalid"),
    Detail(_PORT_DETAIL, _PORT_DETAIL),
]
_EVENTS_DETAIL: Final = Detail("{name} must be an object, got {type}", "{name} must be an object")
_EventsObject = Annotated[dict[str, Any], _EVENTS_DETAIL]

# Strict: JSON types are never coerced. Unknown fields are dropped, never an error.
_INPUT: Final = ConfigDict(strict=True, extra="ignore")
# What we write has exactly the documented fields.
_OUTPUT: Final = ConfigDict(strict=True, extra="forbid")


# --- input ------------------------------------------------------------------------------------


@with_config(_INPUT)
class NewProcess(TypedDict):
    """A process start on the device."""

    cmdl: Text
    user: Text


@with_config(_INPUT)
class NetworkConnection(TypedDict):
    """An outbound connection from the device."""

    source_ip: Ipv4
    destination_ip: Ipv4
    destination_port: Port


# Each type's event model; the parse's walk checks each event alone against its type's.
EVENT_MODELS: Final[Mapping[EventType, type[Any]]] = {
    EventType.NEW_PROCESS: NewProcess,
    EventType.NETWORK_CONNECTION: NetworkConnection,
}


# An event of any other type is rejected alone: such a type's list is valid only empty.
_NoEvents = Annotated[list[Any], Field(max_length=0)]


# extra_items is PEP 728, which pydantic reads and mypy does not know yet.
@with_config(ConfigDict(strict=True))
class Events(TypedDict, total=False, extra_items=_NoEvents):  # type: ignore[call-arg]
    """Each known type's events, in body order; any other type's events are rejected."""

    new_process: list[NewProcess]
    network_connection: list[NetworkConnection]


EventsT = TypeVar("EventsT")


@with_config(_INPUT)
class Envelope(TypedDict, Generic[EventsT]):
    """A submission's own fields; `events` as the stage validating it needs it."""

    submission_id: Uuid
    device_id: Uuid
    time_created: IsoTime
    events: EventsT


# The daemon's first stage: the envelope, with `events` still the raw JSON object.
Header = Envelope[_EventsObject]
# The whole submission as the contract declares it: what input.json describes.
Submission = Envelope[Events]


# --- output -----------------------------------------------------------------------------------


@with_config(_OUTPUT)
class NewProcessData(NewProcess):
    """A new_process record's event_data: only the validated fields."""


@with_config(_OUTPUT)
class NetworkConnectionData(NetworkConnection):
    """A network_connection record's event_data: only the validated fields."""


@with_config(_OUTPUT)
class _RecordFields(TypedDict):
    """What every record carries besides its type and data (docs/contract.md, "Output")."""

    event_id: Annotated[
        str,
        Field(
            pattern=LOWER_UUID_PATTERN,
            description='UUIDv5 of "<device_id>:<submission_id>:<sequence>": the same on every'
            ' redelivery, distinct across devices (since 0.2.0; before, "<submission_id>:'
            '<sequence>")',
        ),
    ]
    device_id: Annotated[str, Field(pattern=LOWER_UUID_PATTERN)]
    submission_id: Annotated[str, Field(pattern=LOWER_UUID_PATTERN)]
    sequence: Annotated[
        int, Field(ge=0, description="position in the submission body; rejected events leave gaps")
    ]
    time_created: IsoTime
    processed_at: Annotated[
        str, Field(pattern=PROCESSED_AT_PATTERN, description="when the daemon built the record")
    ]


@with_config(_OUTPUT)
class NewProcessRecord(_RecordFields):
    """One Kinesis record of a new_process event."""

    event_type: Literal[EventType.NEW_PROCESS]
    event_data: NewProcessData


@with_config(_OUTPUT)
class NetworkConnectionRecord(_RecordFields):
    """One Kinesis record of a network_connection event."""

    event_type: Literal[EventType.NETWORK_CONNECTION]
    event_data: NetworkConnectionData


OutputRecord = Annotated[
    NewProcessRecord | NetworkConnectionRecord, Field(discriminator="event_type")
]


# --- checking: what parse.py calls -------------------------------------------------------


def _detail(hint: Any) -> Detail | None:
    return next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Detail)), None)


def _details(model: Any) -> dict[str, Detail]:
    """Each field's Detail, read from its annotation, so the words live with the rule."""
    hints = get_type_hints(model, include_extras=True)
    return {name: d for name, hint in hints.items() if (d := _detail(hint)) is not None}


_JSON_TYPES: Final = ("null", "boolean", "number", "string", "array", "object")


class Checker:
    """One model's validation, and the Rejection that names the first rule a value breaks.

    Valid input never leaves pydantic-core (patterns in Rust; Python only for str.strip and
    fromisoformat). The hot path calls `validate` itself and `rejection` only on a
    ValidationError: a call per event less than `checker(value)`, which tools and tests use.
    """

    __slots__ = ("_rejections", "validate")

    def __init__(
        self, model: Any, details: Mapping[str, Detail], not_an_object: tuple[Reason, str]
    ) -> None:
        self.validate: Callable[[Any], Any] = TypeAdapter(model).validator.validate_python
        # Every Rejection this model can give, built once: a body of 100,000 bad events
        # shares a handful of them (field x failure x JSON type).
        reason, template = not_an_object
        rejections: dict[tuple[str | None, str, str], Rejection] = {
            (None, "", t): Rejection(reason, None, template.format(type=t)) for t in _JSON_TYPES
        }
        for name, detail in details.items():
            rejections[name, "missing", ""] = Rejection(
                Reason.MISSING_FIELD, name, f"{name} is missing"
            )
            for kind, words in (("type", detail.wrong_type), ("value", detail.wrong_value)):
                for t in _JSON_TYPES:
                    rejections[name, kind, t] = Rejection(
                        Reason.INVALID_FIELD, name, words.format(name=name, type=t)
                    )
        self._rejections: Final = rejections

    def __call__(self, value: Any) -> Any:
        """The validated dict (only the model's fields), or a Rejection."""
        try:
            return self.validate(value)
        except ValidationError as exc:
            return self.rejection(exc, value)

    def rejection(self, exc: ValidationError, value: Any) -> Rejection:
        # pydantic reports errors in field order: the first is the rule that rejects.
        error = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        if not error["loc"]:
            return self._rejections[None, "", json_type_name(value)]
        name = str(error["loc"][0])
        if error["type"] == "missing":
            return self._rejections[name, "missing", ""]
        # pydantic names every wrong-JSON-type error <type>_type (string_type, int_type...).
        kind = "type" if error["type"].endswith("_type") else "value"
        return self._rejections[name, kind, json_type_name(value[name])]


# check_header(doc) -> Header | Rejection: the envelope of a decoded body.
check_header: Final = Checker(
    Header,
    _details(Envelope) | {"events": _EVENTS_DETAIL},
    (Reason.NOT_AN_OBJECT, "top level must be an object, got {type}"),
)
# EVENT_CHECKS[type]: each known type's Checker, keyed by the type's name as it appears in a
# body (a StrEnum member hashes as its value).
EVENT_CHECKS: Final[Mapping[str, Checker]] = {
    event_type: Checker(
        model, _details(model), (Reason.EVENT_NOT_AN_OBJECT, "event must be an object, got {type}")
    )
    for event_type, model in EVENT_MODELS.items()
}
