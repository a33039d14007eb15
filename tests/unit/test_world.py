"""What `make world` prints: exports a shell reads back as they were, and commands that run."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from devworld import world
from devworld.emulator import Emulator, World
from event_processor import cli
from sensor_fleet import cli as fleet_cli

README = Path(__file__).parents[2] / "README.md"
LOCAL_WORLD = Path(__file__).parents[2] / "docs" / "local-world.md"
PARSERS = {"event-processor": cli.build_parser, "sensor-fleet": fleet_cli.build_parser}


def test_exports_read_back_in_a_shell_as_they_were() -> None:
    """Sourced by sh, the exports give back every value, quoting included."""
    emulator = Emulator(region="eu-west-1")
    odd = World(
        endpoint_url="http://127.0.0.1:4599",
        region="eu-west-1",
        queue_url="http://127.0.0.1:4599/1/q with space",
        dlq_url="http://127.0.0.1:4599/1/it's-dlq",
        stream_name="events",
    )
    text = world.exports(emulator, odd, "event-processor/sensor-keys")
    shown = subprocess.run(
        ["sh", "-c", text + 'printf "%s\\n" "$QUEUE_URL" "$DLQ_URL" "$AUTH_MODE" "$AWS_REGION"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert shown == [odd.queue_url, odd.dlq_url, "enforce", "eu-west-1"]
    unsigned = world.exports(emulator, odd, None)
    assert "AUTH_MODE" not in unsigned
    assert "AUTH_KEYS_SECRET_ID" not in unsigned


def _check_parses(line: str) -> None:
    """`line` (one shell command, `env -u ...` allowed) parses with our own parsers."""
    argv = shlex.split(line, comments=True)
    if argv[0] == "env":
        argv = argv[1:]
        while argv[0] == "-u":
            argv = argv[2:]
    script = Path(argv[0]).name
    if script not in PARSERS:
        return  # make, curl: not ours
    try:
        PARSERS[script]().parse_args(argv[1:])
    except SystemExit as exc:  # argparse's way of saying no
        pytest.fail(f"{line!r} does not parse: exit {exc.code}")


def _commands(text: str) -> list[str]:
    """Lines in `text` that call one of our console scripts."""
    return [
        line.strip()
        for line in text.splitlines()
        if re.search(r"\b(event-processor|sensor-fleet) [a-z]", line.split("#")[0])
    ]


@pytest.mark.parametrize("signed", [True, False])
def test_the_suggested_commands_parse(signed: bool) -> None:
    """Every command the world suggests on stderr is one the CLIs accept."""
    commands = _commands(world.next_steps(Path("world.env"), signed=signed))
    assert len(commands) >= 5
    for line in commands:
        _check_parses(line)


@pytest.mark.parametrize("doc", [README, LOCAL_WORLD], ids=lambda p: p.name)
def test_the_walk_through_commands_parse(doc: Path) -> None:
    """The try-the-tools walk-through's commands (README, docs/local-world.md) parse."""
    text = doc.read_text(encoding="utf-8")
    start = text.index("make world")
    blocks = re.findall(r"```sh\n(.*?)```", text[start:], flags=re.DOTALL)
    walk = next(block for block in blocks if "sensor-fleet load" in block)
    commands = _commands(walk)
    assert any("dlq redrive --dry-run" in c for c in commands)
    for line in commands:
        _check_parses(line)


def test_argparse_refuses_a_wrong_flag_here_too() -> None:
    """The check above can fail: a flag that does not exist is refused."""
    with pytest.raises(pytest.fail.Exception):
        _check_parses(".venv/bin/sensor-fleet load --count 5 --no-such-flag")
