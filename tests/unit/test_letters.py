"""Event letters: few letters, each within the DLQ's size, every rejected event in them."""

from __future__ import annotations

import gc
import json
import tracemalloc
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from event_processor.contract.letters import (
    KIND_EVENTS,
    LETTER_KIND,
    DeadLetter,
    SourceMessage,
    event_letters,
    read_letter,
)
from event_processor.contract.parse import ParsedSubmission, parse_submission
from event_processor.contract.records import PartitionKey
from event_processor.contract.rules import Rejection
from tests.factories import encode, new_process, submission

PROCESSED_AT = "2026-11-22T10:00:00.000000Z"


# As the daemon receives it: SQS message ids are UUIDs, and their length counts in a letter.
SOURCE = SourceMessage(message_id=str(uuid.uuid4()), receive_count=2, attributes={})


def pack(body: str, max_message_bytes: int) -> tuple[ParsedSubmission, list[DeadLetter]]:
    parsed = parse_submission(body, PROCESSED_AT, PartitionKey.DEVICE_ID)
    assert isinstance(parsed, ParsedSubmission)
    return parsed, event_letters(SOURCE, parsed, max_message_bytes)


def entries(letters: list[DeadLetter]) -> list[tuple[int, str, str]]:
    out = []
    for letter in letters:
        read = read_letter(letter.body)
        assert read is not None
        out += [(e.sequence, e.event_type, e.reason) for e in read.events]
    return sorted(out)


def test_a_hundred_thousand_invalid_events_fit_a_few_letters() -> None:
    """10^5 numbers and empty objects: a handful of 1 MiB letters list every one of them."""
    events = {"new_process": [1, {}] * 50_000}
    parsed, letters = pack(encode(submission(events)), 1024 * 1024)
    assert len(letters) <= 3
    assert all(letter.size <= 1024 * 1024 for letter in letters)
    listed = entries(letters)
    assert [s for s, _, _ in listed] == list(range(100_000))
    assert parsed.rejected.counts == {"event_not_an_object": 50_000, "missing_field": 50_000}


def test_a_hundred_thousand_rejected_events_cost_their_json_and_a_few_bytes_each() -> None:
    """Parsed, 10^5 bad events hold two shared causes and their JSON plus a few bytes each,
    never an object per event, as the budget counts them; the letters take them."""
    body = encode(submission({"new_process": [1, {}] * 50_000}))
    gc.collect()
    tracemalloc.start()
    try:
        parsed = parse_submission(body, PROCESSED_AT, PartitionKey.DEVICE_ID)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert isinstance(parsed, ParsedSubmission)
    rejected = parsed.rejected
    assert (len(rejected), len(rejected.causes)) == (100_000, 2)
    json_bytes = 50_000 * len("1{}")
    assert held < json_bytes + 12 * 100_000 + 64 * 1024  # an object each would be 50+ bytes
    assert abs(rejected.nbytes - held) < held // 10
    event_letters(SOURCE, parsed, 1024 * 1024)
    assert (len(rejected), rejected.nbytes) == (0, 0)
    assert sum(rejected.counts.values()) == 100_000


@pytest.mark.parametrize("max_bytes", [1024, 4096, 64 * 1024, 256 * 1024])
def test_letters_fit_any_dlq_size(max_bytes: int) -> None:
    """Whatever the DLQ's MaximumMessageSize, each letter fits it and none is lost."""
    events = {
        "new_process": [1, new_process(user=""), "x" * 5000, new_process()],
        "t" * 300: [None, [1] * 2000],
    }
    _, letters = pack(encode(submission(events)), max_bytes)
    assert all(letter.size <= max_bytes for letter in letters)
    assert [s for s, _, _ in entries(letters)] == [0, 1, 2, 4, 5]
    parts = [read_letter(letter.body) for letter in letters]
    assert [(p.part, p.parts) for p in parts if p] == [
        (i, len(letters)) for i in range(1, len(letters) + 1)
    ]


def test_an_event_too_big_for_a_letter_is_cut_not_dropped() -> None:
    """A 500 KB invalid event in a 64 KiB DLQ: listed, marked truncated, with a preview."""
    events = {"new_process": [{"cmdl": "x" * 500_000}]}
    _, letters = pack(encode(submission(events)), 64 * 1024)
    [letter] = letters
    read = read_letter(letter.body)
    assert read is not None
    [entry] = read.events
    assert entry.truncated
    assert entry.reason == "missing_field"
    assert isinstance(entry.event, str)
    assert entry.event.startswith('{"cmdl":"xxx')


def test_letter_body_shape_and_attributes() -> None:
    """The documented keys, ASCII JSON, and the four attributes with the letter's reason."""
    sid, did = str(uuid.uuid4()), str(uuid.uuid4())
    events = {"new_process": [new_process(user=7), "\ufffe"]}
    body = encode(submission(events, submission_id=sid, device_id=did))
    _, [letter] = pack(body, 256 * 1024)
    assert letter.kind == KIND_EVENTS
    assert letter.body.isascii()
    doc = json.loads(letter.body)
    assert doc["kind"] == LETTER_KIND
    assert (doc["submission_id"], doc["device_id"], doc["part"], doc["parts"]) == (sid, did, 1, 1)
    assert doc["event_count"] == 2
    assert [set(g) for g in doc["groups"]] == [
        {"event_type", "reason", "field", "detail", "sequences", "events"}
    ] * 2
    assert doc["groups"][1]["events"] == ["\ufffe"]
    assert letter.attributes["reason"]["StringValue"] == "mixed"
    assert letter.attributes["receive_count"]["StringValue"] == "2"
    assert set(letter.attributes) == {"reason", "detail", "source_message_id", "receive_count"}


def test_version_one_letters_still_read() -> None:
    """A one-event letter written before packing reads as a one-event letter."""
    old = {
        "reason": "missing_field",
        "field": "user",
        "detail": "user is missing",
        "submission_id": "s",
        "device_id": "d",
        "sequence": 4,
        "event_type": "new_process",
        "source_message_id": "m",
        "event": {"cmdl": "x"},
    }
    read = read_letter(json.dumps(old))
    assert read is not None
    [entry] = read.events
    assert (entry.sequence, entry.field, entry.event) == (4, "user", {"cmdl": "x"})
    assert read_letter('{"submission_id": "not a letter"}') is None
    assert read_letter("plain text body") is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.text(max_size=20), st.lists(json_values, max_size=6) | json_values),
    st.sampled_from([1024, 2048, 300_000]),
)
def test_every_rejected_event_is_in_exactly_one_letter(events: dict[str, Any], size: int) -> None:
    """For any events: the letters list exactly the events parse_submission rejects."""
    body = encode(submission(events))
    reference = parse_submission(body)
    if isinstance(reference, Rejection):
        return  # rejected whole (a known type that is not a list): no event letters
    _, letters = pack(body, size)
    expected = sorted(
        (r.sequence, r.event_type[:100], r.rejection.reason.value) for r in reference.rejected
    )
    assert entries(letters) == expected
    assert all(letter.size <= size for letter in letters)
