"""--help answers: every setting in one section with its range or choices, every option
described, sensible placeholders, no `default None`."""

from __future__ import annotations

import argparse
import enum
from collections.abc import Iterator

import annotated_types
import pytest

from event_processor import cli
from event_processor.config import GROUP_TITLES, Settings
from sensor_fleet import cli as fleet_cli

# What a value flag's placeholder may be, besides a {choice,...} list.
PLACEHOLDERS = {
    "URL",
    "NAME",
    "REGION",
    "N",
    "SECONDS",
    "MIB",
    "PORT",
    "HOST",
    "PATH",
    "SECRET_ID",
    "ID",
    "P",
    "PER_SECOND",
}


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """argparse wraps at $COLUMNS: one line per option, whatever the terminal."""
    monkeypatch.setenv("COLUMNS", "1000")


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and every sub-command's parser under it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options a user types (not -h, --version or the sub-command choice)."""
    return [
        action
        for action in parser._actions
        if action.option_strings
        and not isinstance(action, argparse._HelpAction | argparse._VersionAction)
    ]


def sub(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    """The parser of the sub-command at `path` (e.g. "dlq", "inspect")."""
    for name in path:
        choices = next(
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        ).choices
        parser = choices[name]
    return parser


def run_parser() -> argparse.ArgumentParser:
    return sub(cli.build_parser(), "run")


def test_every_setting_is_in_exactly_one_section() -> None:
    """Each Settings field has one `run` flag, in one of the named sections (AWS, source...)."""
    groups = {
        group.title: [a.dest for a in group._group_actions] for group in run_parser()._action_groups
    }
    for name in Settings.model_fields:
        holding = [title for title, dests in groups.items() if name in dests]
        assert len(holding) == 1, (name, holding)
        assert holding[0] in GROUP_TITLES.values(), f"{name} names no section (Field's _shown)"
    assert all(groups[title] for title in GROUP_TITLES.values()), "an empty section"


def test_run_help_shows_ranges_and_choices() -> None:
    """A bounded setting shows its range, an enum or bool its choices, in `run --help`."""
    flags = {a.dest: a for a in options(run_parser())}
    for name, field in Settings.model_fields.items():
        action = flags[name]
        bounds = {type(c): c for c in field.metadata}
        if annotated_types.Ge in bounds and annotated_types.Le in bounds:
            low = bounds[annotated_types.Ge].ge
            high = bounds[annotated_types.Le].le
            assert f"({low}-{high})" in str(action.help), (name, action.help)
        if isinstance(field.annotation, type) and issubclass(field.annotation, enum.Enum):
            values = ",".join(str(m.value) for m in field.annotation)
            assert action.metavar == "{" + values + "}", name
        if field.annotation is bool:
            assert action.metavar == "{true,false}", name


def test_run_help_reads_as_the_operator_needs_it() -> None:
    """Examples of the rendered help: ranges, choices, variables and defaults on one line."""
    text = " ".join(run_parser().format_help().split())
    for line in (
        "--batch-size N messages per receive (1-10) [env BATCH_SIZE; default 10]",
        "(0-20) [env WAIT_TIME_SECONDS; default 20]",
        "--log-level {DEBUG,INFO,WARNING,ERROR}",
        "--partition-key {device_id,submission_id}",
        "--lean-aws-calls {true,false}",
        "[env LEAN_AWS_CALLS; default true]",
        "--dlq-url URL",
        "sink: the Kinesis stream events go to, and the dead-letter queue:",
    ):
        assert line in text, line


def test_placeholders_are_words_not_the_tail_of_the_flag() -> None:
    """Every value option of `run`, `demo` and sensor-fleet has a placeholder from a small
    vocabulary (or its choices): no FLIGHT, CALLS or the flag's name shouted back."""
    daemon = cli.build_parser()
    for root in (sub(daemon, "run"), sub(daemon, "demo"), fleet_cli.build_parser()):
        for parser in parsers(root):
            for action in options(parser):
                if action.nargs == 0:  # a switch: no value
                    continue
                metavar = str(action.metavar)
                assert metavar.startswith("{") or metavar in PLACEHOLDERS, (
                    parser.prog,
                    action.option_strings,
                    metavar,
                )


def test_no_help_says_default_none() -> None:
    """An unset default is said in words or left out, never `default None`."""
    for root in (cli.build_parser(), fleet_cli.build_parser()):
        for parser in parsers(root):
            assert "None" not in parser.format_help(), parser.prog


@pytest.mark.parametrize(
    "parser",
    [
        fleet_cli.build_parser(),
        sub(fleet_cli.build_parser(), "simulate"),
        sub(fleet_cli.build_parser(), "load"),
        sub(fleet_cli.build_parser(), "host"),
        sub(cli.build_parser(), "demo"),
    ],
    ids=lambda p: p.prog,
)
def test_every_option_is_described(parser: argparse.ArgumentParser) -> None:
    """Every option of sensor-fleet (each mode) and of `demo` has help text; those with a
    default say it."""
    for action in options(parser):
        assert action.help, action.option_strings
        assert action.help != argparse.SUPPRESS, action.option_strings
        if action.nargs != 0 and action.default is not None:
            assert "default" in action.help, action.option_strings
    assert parser.description, parser.prog
