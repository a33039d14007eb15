"""`make world`'s command as a newcomer uses it: it comes up, prints the exports, the tools and
the fleet work with them, and Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import boto3
import pytest

from devworld import world
from event_processor.contract.signing import SIGNATURE_ATTRIBUTE
from sensor_fleet.generator import device_ids
from tests.helpers import run_cli

pytestmark = pytest.mark.e2e

EXPORTS = {
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "QUEUE_URL",
    "DLQ_URL",
    "STREAM_NAME",
    "AUTH_MODE",
    "AUTH_KEYS_SECRET_ID",
}
# moto's import and the world's creation take about a second; a loaded machine, more.
UP_TIMEOUT_S = 60.0


class Running:
    """The world's process, its stdout read line by line by a thread, and its files."""

    def __init__(self, process: subprocess.Popen[str], env_file: Path, err_path: Path) -> None:
        self.process = process
        self.env_file = env_file
        self.err_path = err_path
        self.lines: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        self.reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self.reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def exports(self) -> tuple[dict[str, str], str]:
        """The `export` lines printed on stdout, parsed as a shell would, and the text they
        came in; fails if they are not all there within UP_TIMEOUT_S."""
        exports: dict[str, str] = {}
        text = ""
        deadline = time.monotonic() + UP_TIMEOUT_S
        while not exports.keys() >= EXPORTS:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"the world printed only {sorted(exports)}"
            assert self.process.poll() is None, f"the world exited {self.process.returncode}"
            try:
                line = self.lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            text += line
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                exports[name] = shlex.split(value)[0]
        return exports, text

    def reap(self) -> None:
        """Kill it if still running, wait, and close its stdout once the reader is done."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)  # EOF once the process is gone
        assert self.process.stdout is not None
        self.process.stdout.close()


def _start(tmp_path: Path, *args: str) -> Iterator[Running]:
    """`python -m devworld.world --port 0 --env-file ... ARGS`, reaped at the end."""
    env_file, err_path = tmp_path / "world.env", tmp_path / "world.err"
    command = [sys.executable, "-m", "devworld.world", "--port", "0", "--env-file", str(env_file)]
    with err_path.open("w") as err:
        process = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    running = Running(process, env_file, err_path)
    try:
        yield running
    finally:
        running.reap()


@pytest.fixture
def started_world(tmp_path: Path) -> Iterator[Running]:
    """`python -m devworld.world --port 0 --env-file ...`, reaped at teardown."""
    yield from _start(tmp_path)


@pytest.fixture
def started_fifo_world(tmp_path: Path) -> Iterator[Running]:
    """The same with --fifo, reaped at teardown."""
    yield from _start(tmp_path, "--fifo")


def test_world_comes_up_serves_the_tools_and_stops_on_ctrl_c(started_world: Running) -> None:
    """The world prints complete exports (also to --env-file); with them `dlq inspect` runs,
    the fleet signs with the world's key set and its submissions are in the queue; SIGINT
    stops the world with exit 0 and removes the env file."""
    process, env_file = started_world.process, started_world.env_file
    exports, text = started_world.exports()
    assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert exports["AUTH_MODE"] == "enforce"
    assert env_file.read_text() == text
    env = {**os.environ, **exports, "PYTHONUNBUFFERED": "1"}

    inspected = run_cli("event-processor", "dlq", "inspect", env=env)
    assert inspected.returncode == 0, inspected.stderr
    assert exports["DLQ_URL"] in inspected.stdout

    sent = run_cli("sensor-fleet", "load", "--count", "5", env=env)
    assert sent.returncode == 0, sent.stderr
    assert "sent 5 submissions" in sent.stdout
    sqs = boto3.client(
        "sqs", endpoint_url=exports["AWS_ENDPOINT_URL"], region_name=exports["AWS_REGION"]
    )
    messages = sqs.receive_message(
        QueueUrl=exports["QUEUE_URL"], MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )["Messages"]
    assert messages
    # Signed with the key set the world made: the daemon's AUTH_MODE=enforce would take them.
    assert all(SIGNATURE_ATTRIBUTE in m["MessageAttributes"] for m in messages)
    depth = sqs.get_queue_attributes(
        QueueUrl=exports["QUEUE_URL"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert sum(int(v) for v in depth.values()) == 5

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert not env_file.exists()
    err = started_world.err_path.read_text()
    assert "dlq redrive --dry-run" in err
    assert "world: stopping" in err


def test_a_fifo_world_takes_the_fleet_by_device_and_the_tools(started_fifo_world: Running) -> None:
    """--fifo: the exports name FIFO queues; with them the fleet sends each device's
    submissions in its own message group, and `dlq inspect` and `dlq redrive` run on them."""
    exports, text = started_fifo_world.exports()
    assert exports["QUEUE_URL"].endswith("/submissions.fifo")
    assert exports["DLQ_URL"].endswith("/submissions-dlq.fifo")
    assert "FIFO queue and DLQ (--fifo)" in text
    env = {**os.environ, **exports, "PYTHONUNBUFFERED": "1"}

    sent = run_cli(
        "sensor-fleet", "--seed", "4", "load", "--count", "12", "--fleet-size", "3", env=env
    )
    assert sent.returncode == 0, sent.stderr
    assert "sent 12 submissions" in sent.stdout
    sqs = boto3.client(
        "sqs", endpoint_url=exports["AWS_ENDPOINT_URL"], region_name=exports["AWS_REGION"]
    )
    groups: set[str] = set()
    while messages := sqs.receive_message(
        QueueUrl=exports["QUEUE_URL"], MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    ).get("Messages", []):
        groups |= {m["Attributes"]["MessageGroupId"] for m in messages}
        sqs.delete_message_batch(
            QueueUrl=exports["QUEUE_URL"],
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
    assert groups == set(device_ids(3, seed=4))

    for tool in (["dlq", "inspect"], ["dlq", "redrive", "--dry-run"]):
        result = run_cli("event-processor", *tool, env=env)
        assert result.returncode == 0, result.stderr
        assert exports["DLQ_URL"] in result.stdout


def test_a_taken_port_is_named_and_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """A port already in use ends start-up with exit 3 and a message naming it and the fix,
    instead of moto's server thread dying while start-up waits for it."""
    with socket.socket() as holder:
        holder.bind((world.HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert world.main(["--port", str(port)]) == 3
    err = capsys.readouterr().err
    assert f"{world.HOST}:{port}" in err
    assert "--port 0" in err
