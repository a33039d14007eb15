"""The input and output contracts, rule by rule, plus properties over arbitrary input."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from event_processor import constants
from event_processor.contract.parse import ParsedSubmission, decode_body, parse_submission
from event_processor.contract.records import PartitionKey, Record, event_id
from event_processor.contract.rules import EventType, Reason, Rejection
from tests.factories import encode, network_connection, new_process, submission

SUB_ID = "3f2b8c1e-9d4a-4e6b-8f1a-2c3d4e5f6a7b"
DEV_ID = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
PROCESSED_AT = "2026-11-22T10:00:00.123456Z"


def parse_ok(
    body: str,
    processed_at: str = PROCESSED_AT,
    partition_key: PartitionKey = PartitionKey.DEVICE_ID,
) -> ParsedSubmission:
    result = parse_submission(body, processed_at, partition_key)
    assert isinstance(result, ParsedSubmission), result
    return result


def records_of(
    body: str, processed_at: str = "t", partition_key: PartitionKey = PartitionKey.DEVICE_ID
) -> list[Record]:
    """Every record of a valid body, built as the sink builds them."""
    return list(parse_ok(body, processed_at, partition_key).records)


def parse_rejected(body: str) -> Rejection:
    result = parse_submission(body)
    assert isinstance(result, Rejection), result
    return result


# --- decoding ------------------------------------------------------------------------


def test_base64_json_is_accepted() -> None:
    """The fleet's base64 wire format decodes."""
    assert parse_ok(encode(submission())).events


def test_plain_json_is_accepted() -> None:
    """Plain JSON bodies are accepted too."""
    assert parse_ok(orjson.dumps(submission()).decode()).events


def test_line_wrapped_base64_is_accepted() -> None:
    """MIME-style wrapped base64 (newlines every 76 chars) decodes."""
    wrapped = base64.encodebytes(orjson.dumps(submission())).decode()
    assert "\n" in wrapped
    assert parse_ok(wrapped).events


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("", Reason.INVALID_BODY),
        ("not json at all", Reason.INVALID_BODY),
        ("{", Reason.INVALID_BODY),
        (base64.b64encode(b"\xff\xfe\xfa{}").decode(), Reason.INVALID_BODY),  # invalid UTF-8
        (base64.b64encode(b"{'single': 'quotes'}").decode(), Reason.INVALID_BODY),
        ('{"a": NaN}', Reason.INVALID_BODY),
        ('{"a": "\\ud800"}', Reason.INVALID_BODY),  # lone surrogate
        ("[" * 100_000 + "]" * 100_000, Reason.INVALID_BODY),  # deeper than orjson's 1024
        ("[]", Reason.NOT_AN_OBJECT),
        ("42", Reason.NOT_AN_OBJECT),
        ("1234", Reason.NOT_AN_OBJECT),  # valid base64 whose bytes are not JSON
        ('"text"', Reason.NOT_AN_OBJECT),
        ("null", Reason.NOT_AN_OBJECT),
        (encode([submission()]), Reason.NOT_AN_OBJECT),
    ],
)
def test_undecodable_bodies_are_rejected_whole(body: str, reason: Reason) -> None:
    """Bodies that are not a JSON object are rejected with a reason, never raised."""
    assert parse_rejected(body).reason is reason


def test_decode_body_never_raises_on_invalid_utf8_text() -> None:
    """A str with lone surrogates (possible from a decoded response) is a rejection."""
    assert isinstance(decode_body("\udcff{}"), Rejection)


# --- whole-submission rules ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"submission_id": None}, Reason.INVALID_FIELD, "submission_id"),
        ({"submission_id": "not-an-uuid"}, Reason.INVALID_FIELD, "submission_id"),
        ({"submission_id": 123}, Reason.INVALID_FIELD, "submission_id"),
        ({"submission_id": "{" + SUB_ID + "}"}, Reason.INVALID_FIELD, "submission_id"),
        ({"submission_id": SUB_ID.replace("-", "")}, Reason.INVALID_FIELD, "submission_id"),
        ({"device_id": "not-an-uuid"}, Reason.INVALID_FIELD, "device_id"),
        ({"device_id": ["a"]}, Reason.INVALID_FIELD, "device_id"),
        ({"time_created": "yesterday"}, Reason.INVALID_FIELD, "time_created"),
        ({"time_created": 1700000000}, Reason.INVALID_FIELD, "time_created"),
        ({"time_created": ""}, Reason.INVALID_FIELD, "time_created"),
        ({"events": []}, Reason.INVALID_FIELD, "events"),
        ({"events": "x"}, Reason.INVALID_FIELD, "events"),
        ({"events": None}, Reason.INVALID_FIELD, "events"),
        (
            {"events": {"new_process": {"cmdl": "a", "user": "b"}}},
            Reason.INVALID_EVENT_LIST,
            "new_process",
        ),
        ({"events": {"network_connection": None}}, Reason.INVALID_EVENT_LIST, "network_connection"),
        (
            {"events": {"new_process": [new_process()], "network_connection": "oops"}},
            Reason.INVALID_EVENT_LIST,
            "network_connection",
        ),
    ],
)
def test_whole_submission_rules(change: dict[str, Any], reason: Reason, field: str) -> None:
    """Each whole-submission rule rejects everything, naming the field."""
    rejection = parse_rejected(encode({**submission(), **change}))
    assert (rejection.reason, rejection.field) == (reason, field)
    assert rejection.detail


@pytest.mark.parametrize("missing", ["submission_id", "device_id", "time_created", "events"])
def test_missing_top_level_fields(missing: str) -> None:
    """A missing required field is a missing_field rejection naming it."""
    doc = submission()
    del doc[missing]
    rejection = parse_rejected(encode(doc))
    assert (rejection.reason, rejection.field) == (Reason.MISSING_FIELD, missing)


@pytest.mark.parametrize(
    "time_created", ["2026-11-22T10:00:00", "2026-11-22T10:00:00.123+02:00", "2026-11-22T10:00:00Z"]
)
def test_iso_8601_forms_are_accepted_and_forwarded_as_sent(time_created: str) -> None:
    """time_created is device local time and is forwarded untouched."""
    parsed = parse_ok(encode(submission(time_created=time_created)))
    assert parsed.time_created == time_created


def test_ids_are_normalised_to_lower_case() -> None:
    """Upper-case UUIDs are accepted and lower-cased, so event ids do not depend on case."""
    parsed = parse_ok(encode(submission(submission_id=SUB_ID.upper(), device_id=DEV_ID.upper())))
    assert (parsed.submission_id, parsed.device_id) == (SUB_ID, DEV_ID)


def test_empty_submission_is_valid() -> None:
    """A valid submission with zero events is accepted and yields no records."""
    parsed = parse_ok(encode(submission({})))
    assert parsed.events == []
    assert list(parsed.records) == []


# --- per-event rules -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "event", "field"),
    [
        ("new_process", new_process(cmdl=None), "cmdl"),
        ("new_process", new_process(cmdl=""), "cmdl"),
        ("new_process", new_process(cmdl="   "), "cmdl"),
        ("new_process", new_process(cmdl=42), "cmdl"),
        ("new_process", {"user": "x"}, "cmdl"),
        ("new_process", new_process(user=None), "user"),
        ("new_process", new_process(user=""), "user"),
        ("new_process", new_process(user=["root"]), "user"),
        ("new_process", {"cmdl": "x"}, "user"),
        ("network_connection", network_connection(source_ip="not-an-ip"), "source_ip"),
        ("network_connection", network_connection(destination_ip="not-an-ip"), "destination_ip"),
        ("network_connection", network_connection(destination_ip="256.1.1.1"), "destination_ip"),
        ("network_connection", network_connection(destination_ip="01.2.3.4"), "destination_ip"),
        ("network_connection", network_connection(destination_ip="1.2.3"), "destination_ip"),
        ("network_connection", network_connection(destination_ip="1.2.3.4\n"), "destination_ip"),
        ("network_connection", network_connection(destination_ip="::1"), "destination_ip"),
        ("network_connection", network_connection(destination_ip="\u0661.2.3.4"), "destination_ip"),
        ("network_connection", network_connection(destination_ip=16909060), "destination_ip"),
        ("network_connection", network_connection(destination_port="443"), "destination_port"),
        ("network_connection", network_connection(destination_port=443.5), "destination_port"),
        ("network_connection", network_connection(destination_port=443.0), "destination_port"),
        ("network_connection", network_connection(destination_port=True), "destination_port"),
        ("network_connection", network_connection(destination_port=-1), "destination_port"),
        ("network_connection", network_connection(destination_port=65536), "destination_port"),
        ("network_connection", network_connection(destination_port=10**30), "destination_port"),
        (
            "network_connection",
            {"source_ip": "1.1.1.1", "destination_ip": "1.1.1.1"},
            "destination_port",
        ),
    ],
)
def test_invalid_event_is_rejected_alone(event_type: str, event: Any, field: str) -> None:
    """A bad event is rejected with its field; its valid neighbours still publish."""
    events = {
        event_type: [new_process() if event_type == "new_process" else network_connection(), event]
    }
    parsed = parse_ok(encode(submission(events)))
    assert [e.sequence for e in parsed.events] == [0]
    [rejected] = parsed.rejected
    assert rejected.sequence == 1
    assert rejected.rejection.field == field
    assert rejected.rejection.reason in {Reason.INVALID_FIELD, Reason.MISSING_FIELD}
    # As decoded: orjson reads integers beyond 64 bits as floats.
    assert rejected.event == orjson.loads(json.dumps(event))


@pytest.mark.parametrize("port", [0, 1, 443, 65535])
def test_port_bounds_are_inclusive(port: int) -> None:
    """0 and 65535 are valid ports."""
    parsed = parse_ok(
        encode(submission({"network_connection": [network_connection(destination_port=port)]}))
    )
    assert parsed.events[0].data["destination_port"] == port


@pytest.mark.parametrize("event", [None, "x", 1, [new_process()], True])
def test_event_that_is_not_an_object(event: Any) -> None:
    """A non-object event is rejected alone."""
    parsed = parse_ok(encode(submission({"new_process": [event, new_process()]})))
    assert parsed.rejected[0].rejection.reason is Reason.EVENT_NOT_AN_OBJECT
    assert [e.sequence for e in parsed.events] == [1]


def test_unknown_event_type_is_rejected_per_event() -> None:
    """Unknown types reject their events, count in the sequence, and leave the rest."""
    events = {
        "file_write": [{"path": "/etc/passwd"}, {"path": "/var/x"}],
        "new_process": [new_process()],
        "dns_query": "lone value",
    }
    parsed = parse_ok(encode(submission(events)))
    assert [(r.sequence, r.event_type, r.rejection.reason) for r in parsed.rejected] == [
        (0, "file_write", Reason.UNKNOWN_EVENT_TYPE),
        (1, "file_write", Reason.UNKNOWN_EVENT_TYPE),
        (3, "dns_query", Reason.UNKNOWN_EVENT_TYPE),
    ]
    assert [e.sequence for e in parsed.events] == [2]


def test_sequence_follows_body_order_with_gaps() -> None:
    """sequence counts types in body order, then list order; rejected events leave gaps."""
    events = {
        "network_connection": [network_connection(), network_connection(destination_port="x")],
        "new_process": [new_process(), new_process()],
    }
    parsed = parse_ok(encode(submission(events)))
    assert [(e.sequence, e.event_type) for e in parsed.events] == [
        (0, EventType.NETWORK_CONNECTION),
        (2, EventType.NEW_PROCESS),
        (3, EventType.NEW_PROCESS),
    ]


def test_unknown_fields_are_dropped() -> None:
    """Unknown fields inside an event are not forwarded."""
    event = {**new_process(), "pid": 4242, "secret": "x"}
    parsed = parse_ok(encode(submission({"new_process": [event]})))
    assert parsed.events[0].data == new_process()


def test_large_string_field_is_accepted() -> None:
    """A 200 KB cmdl is valid: it fits in one Kinesis record."""
    records = records_of(encode(submission({"new_process": [new_process(cmdl="x" * 200_000)]})))
    assert len(records) == 1


# --- output records ------------------------------------------------------------------


def test_output_record_fields() -> None:
    """Records carry exactly the documented fields."""
    records = records_of(
        encode(submission(submission_id=SUB_ID, device_id=DEV_ID)), "2026-11-22T10:00:00.123456Z"
    )
    doc = orjson.loads(records[0].data)
    assert doc == {
        "event_id": event_id(DEV_ID, SUB_ID, 0),
        "event_type": "new_process",
        "device_id": DEV_ID,
        "submission_id": SUB_ID,
        "sequence": 0,
        "time_created": "2026-11-22T10:00:00",
        "processed_at": "2026-11-22T10:00:00.123456Z",
        "event_data": new_process(),
    }
    assert all(r.partition_key == DEV_ID for r in records)


def test_partition_key_can_be_submission_id() -> None:
    """PARTITION_KEY=submission_id keys every record by its submission."""
    records = records_of(encode(submission(submission_id=SUB_ID)), "t", PartitionKey.SUBMISSION_ID)
    assert {r.partition_key for r in records} == {SUB_ID}


def test_event_id_is_a_deterministic_uuid5() -> None:
    """Same device, submission and sequence, same id; the id is a valid version-5 UUID."""
    assert event_id(DEV_ID, SUB_ID, 3) == event_id(DEV_ID, SUB_ID, 3)
    assert event_id(DEV_ID, SUB_ID, 3) != event_id(DEV_ID, SUB_ID, 4)
    assert uuid.UUID(event_id(DEV_ID, SUB_ID, 3)).version == 5


def test_event_id_is_uuid5_of_device_submission_and_sequence() -> None:
    """The documented name, hashed by the stdlib's uuid5: what a consumer can recompute."""
    namespace = uuid.UUID(constants.EVENT_ID_NAMESPACE)
    expected = uuid.uuid5(namespace, f"{DEV_ID}:{SUB_ID}:7")
    assert event_id(DEV_ID, SUB_ID, 7) == str(expected)


def test_two_devices_with_one_submission_id_get_distinct_event_ids() -> None:
    """A cloned or hostile sensor reusing a submission_id never shares an id with another."""
    other_device = "0f0e0d0c-0b0a-4908-8706-050403020100"
    body = {"new_process": [new_process(), new_process()]}
    ids = {
        device: [
            orjson.loads(r.data)["event_id"]
            for r in records_of(
                encode(submission(body, submission_id=SUB_ID, device_id=device)),
                "2026-11-22T10:00:00.123456Z",
            )
        ]
        for device in (DEV_ID, other_device)
    }
    assert len(ids[DEV_ID]) == len(ids[other_device]) == 2
    assert not set(ids[DEV_ID]) & set(ids[other_device])


def test_record_over_one_mib_is_rejected() -> None:
    """An event whose record would exceed Kinesis's 1 MiB goes to rejected, not the stream."""
    huge = "x" * constants.KINESIS_MAX_RECORD_BYTES
    parsed = parse_ok(
        orjson.dumps(submission({"new_process": [new_process(cmdl=huge), new_process()]})).decode()
    )
    records = list(parsed.records)
    assert [r.sequence for r in records] == [1]
    assert [r.rejection.reason for r in parsed.rejected] == [Reason.RECORD_TOO_LARGE]


# --- properties ----------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_no_text_raises(body: str) -> None:
    """Any text at all parses to a ParsedSubmission or a Rejection."""
    assert isinstance(parse_submission(body), ParsedSubmission | Rejection)


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_no_base64_payload_raises(payload: bytes) -> None:
    """Any bytes, base64-encoded, parse to a ParsedSubmission or a Rejection."""
    result = parse_submission(base64.b64encode(payload).decode())
    assert isinstance(result, ParsedSubmission | Rejection)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=20), st.lists(json_values, max_size=4) | json_values, max_size=4
    )
)
def test_arbitrary_events_never_raise_and_account_for_every_event(events: dict[str, Any]) -> None:
    """Every event is either accepted or rejected, with sequences 0..n-1 and no overlap."""
    result = parse_submission(encode(submission(events)))
    if isinstance(result, Rejection):
        assert result.reason is Reason.INVALID_EVENT_LIST
        return
    records = list(result.records)
    sequences = sorted([e.sequence for e in result.events] + [r.sequence for r in result.rejected])
    assert sequences == list(range(len(sequences)))
    for record in records:
        orjson.loads(record.data)  # every record is valid JSON


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1).filter(str.strip),
    st.text(min_size=1).filter(str.strip),
    st.integers(0, 65535),
)
def test_valid_events_round_trip(cmdl: str, user: str, port: int) -> None:
    """Valid values come out in the record exactly as they went in."""
    events = {
        "new_process": [new_process(cmdl, user)],
        "network_connection": [network_connection(destination_port=port)],
    }
    body = encode(submission(events))
    records = records_of(body)
    docs = [orjson.loads(r.data) for r in records]
    assert docs[0]["event_data"] == {"cmdl": cmdl, "user": user}
    assert docs[1]["event_data"]["destination_port"] == port


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.text(min_size=1).filter(str.strip), st.text(min_size=1)), max_size=6),
    st.sampled_from(list(PartitionKey)),
)
def test_records_are_the_documented_dict_and_know_their_sizes(
    processes: list[tuple[str, str]], partition_key: PartitionKey
) -> None:
    """The record writer's bytes are orjson's for the documented dict, and the size each
    accepted record keeps from its encoding is what Kinesis counts: data plus key, in bytes."""
    events = {"new_process": [new_process(cmdl, user) for cmdl, user in processes]}
    body = encode(submission(events, submission_id=SUB_ID, device_id=DEV_ID))
    namespace = uuid.UUID(constants.EVENT_ID_NAMESPACE)
    key = DEV_ID if partition_key is PartitionKey.DEVICE_ID else SUB_ID
    expected = [
        Record(
            orjson.dumps(
                {
                    "event_id": str(uuid.uuid5(namespace, f"{DEV_ID}:{SUB_ID}:{sequence}")),
                    "event_type": "new_process",
                    "device_id": DEV_ID,
                    "submission_id": SUB_ID,
                    "sequence": sequence,
                    "time_created": "2026-11-22T10:00:00",
                    "processed_at": PROCESSED_AT,
                    "event_data": {"cmdl": cmdl, "user": user},
                }
            ),
            key,
            sequence,
            EventType.NEW_PROCESS,
        )
        for sequence, (cmdl, user) in enumerate(processes)
        if user.strip()  # a blank user is rejected, and leaves a gap
    ]
    records = parse_ok(body, PROCESSED_AT, partition_key).records
    assert list(records) == expected
    assert [records.size(i) for i in range(len(records))] == [r.size for r in expected]
    assert all(r.size == len(r.data) + len(r.partition_key.encode()) for r in expected)
