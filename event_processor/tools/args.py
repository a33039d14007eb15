"""argparse types and flags the tools share (cheap: `cli` builds every parser on every start)."""

from __future__ import annotations

import argparse

from event_processor.config import Settings, env_names


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def add_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    """Flags for these Settings fields (plus the endpoint and region), named as `run` names them."""
    for name in ("endpoint_url", "aws_region", *names):
        field = Settings.model_fields[name]
        shown = getattr(field.default, "value", field.default)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            help=f"{field.description} [env {env_names(name)}; default {shown}]",
        )
