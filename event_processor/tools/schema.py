"""`event-processor schema input|output`: print the contract's JSON Schema."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from event_processor import exitcodes
from event_processor.contract.schema import SCHEMAS, schema_json


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("schema", help="print the input or output JSON Schema")
    parser.add_argument("which", choices=list(SCHEMAS), help="the submission or the record")
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    (out or sys.stdout).write(schema_json(args.which))
    return exitcodes.OK
