"""The pydantic contract: its published schemas, its rules, and the daemon's parse agreeing with it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from event_processor import cli, exitcodes
from event_processor.contract import rules
from event_processor.contract import schema as schemas
from event_processor.contract.parse import ParsedSubmission, parse_submission
from event_processor.contract.records import PartitionKey, format_timestamp
from event_processor.contract.rules import EventType, Reason, Rejection
from tests.factories import network_connection, new_process, submission

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"
SUB_ID = "3f2b8c1e-9d4a-4e6b-8f1a-2c3d4e5f6a7b"


def check_event(event_type: EventType, event: Any) -> Any:
    return rules.EVENT_CHECKS[event_type](event)


# --- the published schemas ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["input", "output"])
def test_committed_schema_files_are_what_the_models_generate(which: str) -> None:
    """docs/schemas/<which>.json cannot drift: regenerate with `event-processor schema <which>`."""
    committed = (SCHEMAS_DIR / f"{which}.json").read_text(encoding="utf-8")
    assert committed == schemas.schema_json(which), (
        f"run: event-processor schema {which} > docs/schemas/{which}.json"
    )


@pytest.mark.parametrize("which", ["input", "output"])
def test_schema_command_prints_the_schema(which: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`event-processor schema input|output` prints the JSON Schema, indented, and exits 0."""
    assert cli.main(["schema", which]) == exitcodes.OK
    out = capsys.readouterr().out
    assert json.loads(out) == schemas.SCHEMAS[which]()
    assert out == json.dumps(schemas.SCHEMAS[which](), indent=2) + "\n"


@pytest.mark.parametrize("which", ["input", "output"])
def test_schemas_are_valid_draft_2020_12(which: str) -> None:
    """Both schemas are valid JSON Schema 2020-12 documents, as they declare."""
    schema = schemas.SCHEMAS[which]()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_command_rejects_other_names() -> None:
    """Only input and output exist; anything else is a usage error."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["schema", "records"])
    assert exited.value.code == exitcodes.USAGE


# --- one model per event type, one Detail per field ---------------------------------------


def test_every_event_type_has_its_model_and_check() -> None:
    """EventType, the event models, the checks and the declared Events agree on the names."""
    names = {t.value for t in EventType}
    assert set(rules.EVENT_MODELS) == set(rules.EVENT_CHECKS) == set(EventType)
    assert set(rules.Events.__annotations__) == names
    record_types = schemas.output_schema()["discriminator"]["mapping"]
    assert set(record_types) == names


VALID: dict[str, tuple[Any, dict[str, Any]]] = {
    "header": (rules.check_header, submission()),
    "new_process": (rules.EVENT_CHECKS[EventType.NEW_PROCESS], new_process()),
    "network_connection": (
        rules.EVENT_CHECKS[EventType.NETWORK_CONNECTION],
        network_connection(),
    ),
}


@pytest.mark.parametrize(("check", "valid"), VALID.values(), ids=list(VALID))
def test_every_field_says_why_it_was_rejected(check: Any, valid: dict[str, Any]) -> None:
    """A null in any field is that field's invalid_field, in its rule's words."""
    assert not isinstance(check(valid), Rejection)
    for name in valid:
        rejection = check({**valid, name: None})
        assert rejection.reason is Reason.INVALID_FIELD
        assert rejection.field == name
        assert rejection.detail.startswith(f"{name} must be ")


# --- the rules, where regex engines and Python differ -------------------------------------


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("0.0.0.0", True),
        ("255.255.255.255", True),
        ("10.0.0.5\n", False),  # Rust's $ is the end of the string, as Python's fullmatch
        ("10.0.0.05", False),
        ("10.0.0.256", False),
        ("10.0.0.\u0665", False),  # an Arabic-Indic five: ASCII digits only
        ("10.0.0", False),
        (" 10.0.0.5", False),
    ],
)
def test_ipv4_rule(address: str, valid: bool) -> None:
    """Dotted quad, octets 0-255 without leading zeros, nothing around it."""
    result = check_event(EventType.NETWORK_CONNECTION, network_connection(source_ip=address))
    assert isinstance(result, dict) is valid
    if not valid:
        assert result == Rejection(
            Reason.INVALID_FIELD, "source_ip", "source_ip must be a dotted IPv4 string"
        )


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("ls", True),
        ("", False),
        (" \t\r\n", False),
        ("\x1c\x1d\x1e\x1f", False),  # str.strip() whitespace that Rust's \s is not
        ("\u3000\u2028\x85", False),
        ("\ufeff", True),  # JSON Schema's \s, not str.strip()'s: a character like any other
        ("\u200b", True),
    ],
)
def test_whitespace_only_is_empty(text: str, valid: bool) -> None:
    """Empty means what str.strip() strips, whatever a regex engine calls whitespace."""
    result = check_event(EventType.NEW_PROCESS, new_process(user=text))
    assert isinstance(result, dict) is valid
    if not valid:
        assert result == Rejection(Reason.INVALID_FIELD, "user", "user is empty")


@pytest.mark.parametrize("port", [True, 443.0, "443", 2**64, -1, 65536, None])
def test_only_json_integers_in_range_are_ports(port: Any) -> None:
    """Booleans, floats (even integral ones), strings and out-of-range numbers are not ports."""
    result = check_event(EventType.NETWORK_CONNECTION, network_connection(destination_port=port))
    assert result == Rejection(
        Reason.INVALID_FIELD, "destination_port", "destination_port must be an integer in 0..65535"
    )


@pytest.mark.parametrize(
    "value",
    [
        SUB_ID.upper() + "\n",
        "{" + SUB_ID + "}",
        "urn:uuid:" + SUB_ID,
        SUB_ID.replace("-", ""),
        SUB_ID[:-1] + "g",
    ],
)
def test_only_canonical_uuids_are_ids(value: str) -> None:
    """The 8-4-4-4-12 form only: braces, urns, bare hex and stray characters are rejected."""
    doc = submission(submission_id=value)
    assert rules.check_header(doc) == Rejection(
        Reason.INVALID_FIELD, "submission_id", "submission_id must be a UUID string, got string"
    )


def test_unknown_fields_are_dropped_and_ids_lower_cased() -> None:
    """What passes is only the contract's fields; ids come out lower case."""
    header = rules.check_header({**submission(submission_id=SUB_ID.upper()), "extra": 1})
    assert header["submission_id"] == SUB_ID
    assert "extra" not in header
    event = check_event(EventType.NEW_PROCESS, {**new_process(), "pid": 7})
    assert event == new_process()


def test_processed_at_pattern_is_what_format_timestamp_writes() -> None:
    """The output schema's processed_at pattern matches the daemon's own timestamps."""
    schema = {"type": "string", "pattern": rules.PROCESSED_AT_PATTERN}
    jsonschema.validate(format_timestamp(datetime(2026, 1, 2, tzinfo=UTC)), schema)


# --- the output model against built records -----------------------------------------------


def test_built_records_validate_against_the_output_model_and_schema() -> None:
    """Records as the daemon builds them pass the strict OutputRecord model and output.json."""
    doc = submission(submission_id=SUB_ID.upper(), time_created="2026-11-22T10:00:00+05:30")
    parsed = parse_submission(
        json.dumps(doc), "2026-11-22T10:00:00.123456Z", PartitionKey.DEVICE_ID
    )
    assert isinstance(parsed, ParsedSubmission)
    records = list(parsed.records)
    assert {r.event_type for r in records} == set(EventType)
    adapter: TypeAdapter[Any] = TypeAdapter(rules.OutputRecord)
    validator = jsonschema.Draft202012Validator(schemas.output_schema())
    for record in records:
        assert adapter.validate_json(record.data) == orjson.loads(record.data)
        validator.validate(orjson.loads(record.data))


def test_output_schema_ties_event_data_to_event_type() -> None:
    """A record whose event_data is another type's is not a valid record."""
    doc = submission({"new_process": [new_process()]})
    parsed = parse_submission(
        json.dumps(doc), "2026-11-22T10:00:00.123456Z", PartitionKey.DEVICE_ID
    )
    assert isinstance(parsed, ParsedSubmission)
    (record,) = parsed.records
    swapped = {**orjson.loads(record.data), "event_type": EventType.NETWORK_CONNECTION.value}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(swapped, schemas.output_schema())
    with pytest.raises(ValidationError):
        TypeAdapter(rules.OutputRecord).validate_python(swapped)


# --- the declared Submission model and the daemon's staged parse agree --------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 70_000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.just(443.0),
    st.text(max_size=4),
    st.just([]),
    st.just({}),
)
blanks = st.lists(st.sampled_from([" ", "\t", "\n", "\x1c", "\xa0", "\u3000", "\ufeff"]))
good_text = st.text(min_size=1, max_size=8).filter(str.strip)
bad_text = st.one_of(blanks.map("".join), scalars)
good_ip = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
bad_ip = st.one_of(
    st.lists(
        st.sampled_from(["0", "01", "255", "256", "\u0665", "-1"]), min_size=3, max_size=5
    ).map(".".join),
    good_ip.map(lambda ip: ip + "\n"),
    scalars,
)
good_port = st.integers(0, 65_535)
bad_port = st.one_of(st.sampled_from([-1, 65_536, True, 443.0, "443", 2**64]), scalars)
good_uuid = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
bad_uuid = st.one_of(st.uuids().map(lambda u: u.hex), st.uuids().map(lambda u: f"{{{u}}}"), scalars)
good_time = st.datetimes().map(lambda d: d.isoformat())
bad_time = st.one_of(st.just("2026-13-01"), st.text(max_size=5), scalars)


def broken(valid: dict[str, Any], invalid: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid half the time; else one field replaced by an invalid value, or left out."""
    keys: list[str | None] = [*[None] * len(valid), *valid]

    def build(key: str | None, drop: bool) -> st.SearchStrategy[dict[str, Any]]:
        if key is None:
            return st.fixed_dictionaries(valid)
        if drop:
            return st.fixed_dictionaries({k: v for k, v in valid.items() if k != key})
        return st.fixed_dictionaries({**valid, key: invalid[key]})

    return st.tuples(st.sampled_from(keys), st.booleans()).flatmap(lambda t: build(*t))


processes = broken({"cmdl": good_text, "user": good_text}, {"cmdl": bad_text, "user": bad_text})
connections = broken(
    {"source_ip": good_ip, "destination_ip": good_ip, "destination_port": good_port},
    {"source_ip": bad_ip, "destination_ip": bad_ip, "destination_port": bad_port},
)


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`common` three times in four."""
    return st.integers(0, 3).flatmap(lambda n: common if n else rare)


event_lists = st.fixed_dictionaries(
    {},
    optional={
        "new_process": mostly(st.lists(mostly(processes, scalars), max_size=5), scalars),
        "network_connection": mostly(st.lists(mostly(connections, scalars), max_size=5), scalars),
        "usb_inserted": st.lists(scalars, max_size=2) | scalars,
    },
).flatmap(lambda d: st.permutations(list(d.items())).map(dict))  # body order varies
documents = broken(
    {
        "submission_id": good_uuid,
        "device_id": good_uuid,
        "time_created": good_time,
        "events": event_lists,
    },
    {"submission_id": bad_uuid, "device_id": bad_uuid, "time_created": bad_time, "events": scalars},
)


def declared_errors(doc: Any) -> list[Any]:
    try:
        TypeAdapter(rules.Submission).validate_python(doc)
    except ValidationError as exc:
        return exc.errors()
    return []


def event_positions(events: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """sequence -> (type, index in its list), as docs/contract.md numbers events."""
    positions: dict[int, tuple[str, int]] = {}
    for name, items in events.items():
        for index in range(len(items) if isinstance(items, list) else 1):
            positions[len(positions)] = (name, index)
    return positions


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_daemon_rejects_exactly_what_the_declared_model_rejects(doc: dict[str, Any]) -> None:
    """Each rejection the daemon makes is the declared model's first error there, same field."""
    body = json.dumps(doc)
    decoded = orjson.loads(body)  # what the daemon validates (big integers become floats)
    errors = declared_errors(decoded)
    parsed = parse_submission(body)
    if isinstance(parsed, Rejection):
        assert errors, parsed
        if parsed.reason is Reason.INVALID_EVENT_LIST:
            assert any(e["loc"] == ("events", parsed.field) for e in errors), errors
        else:  # the envelope's first failing field, in the model's field order
            assert errors[0]["loc"][0] == parsed.field, errors
            assert (parsed.reason is Reason.MISSING_FIELD) == (errors[0]["type"] == "missing")
        return
    # An accepted submission: each model error is one of the daemon's rejected events.
    first: dict[tuple[Any, ...], Any] = {}
    for error in errors:
        first.setdefault(tuple(error["loc"][:3]), error)
    positions = event_positions(decoded["events"])
    rejected_at: set[tuple[Any, ...]] = set()
    for rejected in parsed.rejected:
        name, index = positions[rejected.sequence]
        assert name == rejected.event_type
        if rejected.rejection.reason is Reason.UNKNOWN_EVENT_TYPE:
            rejected_at.add(("events", name))  # the model rejects the type, not each event
            continue
        rejected_at.add(("events", name, index))
        error = first[("events", name, index)]
        assert rejected.rejection.field == (error["loc"][3] if len(error["loc"]) > 3 else None)
        assert (rejected.rejection.reason is Reason.MISSING_FIELD) == (error["type"] == "missing")
    assert set(first) == rejected_at, (errors, parsed.rejected)
