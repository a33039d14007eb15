"""The two log formats: text keeps one `key=value` per field (counts by reason included),
JSON keeps the fields' real objects."""

from __future__ import annotations

import logging

import orjson

from event_processor.logs import JsonFormatter, TextFormatter


def record(**extra: object) -> logging.LogRecord:
    """A record as `log.info("submissions rejected", extra=extra)` makes it."""
    made = logging.makeLogRecord({"name": "event_processor.status", "levelno": logging.INFO})
    made.levelname = "INFO"
    made.msg = "submissions rejected"
    made.__dict__.update(extra)
    return made


FIELDS = {
    "action": "rejections",
    "submissions": {"invalid_body": 12, "signature_invalid": 3},
    "events": {},
    "example_message_ids": {"invalid_body": ["m-1", "m-2"]},
    "dlq_url": None,
}


def test_text_shows_counts_by_reason_and_ids_one_field_each() -> None:
    """A dict reads `reason:count,...`, a list `a|b`, an empty one `-`: no spaces or braces
    that would split a field."""
    line = TextFormatter().format(record(**FIELDS))
    assert line.endswith(
        "INFO event_processor.status: submissions rejected action=rejections"
        " submissions=invalid_body:12,signature_invalid:3 events=-"
        " example_message_ids=invalid_body:m-1|m-2 dlq_url=None"
    ), line


def test_json_keeps_dicts_and_lists_as_objects() -> None:
    """A JSON line parses back to the same counts and ids."""
    doc = orjson.loads(JsonFormatter().format(record(**FIELDS)))
    assert doc["message"] == "submissions rejected"
    assert doc["submissions"] == {"invalid_body": 12, "signature_invalid": 3}
    assert doc["events"] == {}
    assert doc["example_message_ids"] == {"invalid_body": ["m-1", "m-2"]}
    assert doc["dlq_url"] is None
