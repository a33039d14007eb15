"""The contract's JSON Schemas (docs/schemas/), rendered from the models in `rules.py`:
`event-processor schema input|output` prints them and a test keeps docs/schemas/ in step."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from pydantic import TypeAdapter

from event_processor.contract.rules import OutputRecord, Submission

_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def input_schema() -> dict[str, Any]:
    """A submission (the decoded body) every event of which the daemon accepts."""
    schema = TypeAdapter(Submission).json_schema()
    return {
        "$schema": _DIALECT,
        **schema,
        "title": "Submission",
        "description": (
            "One SQS message body, after base64 decoding (docs/contract.md). A body valid here"
            " has every event published (each record under Kinesis's 1 MiB); one that is not"
            " may still publish: a bad event is rejected alone, the rest goes on. Two rules are"
            " stricter than JSON Schema can say: a port is an integer literal (443.0 is invalid)"
            " and a string of only whitespace (str.strip()) is empty."
        ),
    }


def output_schema() -> dict[str, Any]:
    """One Kinesis record's data (docs/contract.md, "Output")."""
    schema = TypeAdapter(OutputRecord).json_schema()
    return {"$schema": _DIALECT, "title": "OutputRecord", **schema}


SCHEMAS: Final[Mapping[str, Callable[[], dict[str, Any]]]] = {
    "input": input_schema,
    "output": output_schema,
}


def schema_json(which: str) -> str:
    """The schema as docs/schemas/<which>.json holds it."""
    return json.dumps(SCHEMAS[which](), indent=2) + "\n"
