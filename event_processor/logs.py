"""Logging set-up: constant messages, context in `extra`, text or one JSON object a line."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def _text(value: Any) -> str:
    """A field's value on a text line: counts by reason as `invalid_body:12,unknown_key:3`,
    lists as `a|b|c`, nothing as `-`, so that a line stays one `key=value` per field."""
    if isinstance(value, dict):
        return ",".join(f"{k}:{_text(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return "|".join(_text(v) for v in value) or "-"
    return str(value)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in extras.items())
        return line


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore narrates every retry at DEBUG/INFO; our own logs say what matters.
    for noisy in ("botocore", "aiobotocore", "urllib3", "aiohttp.access", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
