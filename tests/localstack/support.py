"""What the LocalStack tier shares: the endpoint, compose's settings, the CLI as subprocesses,
the daemon's /metrics, and reading queues and the stream back."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import boto3
from prometheus_client.parser import text_string_to_metric_families

from devworld.emulator import World, free_port, read_stream
from devworld.localstack_host import Service, compose_service
from devworld.verify import decode_records, expected_sequences
from event_processor.auth.keyset import KeySet
from event_processor.config import Settings
from event_processor.tools.aws import queue_counts
from event_processor.tools.keys import read_key_set
from sensor_fleet import generator
from sensor_fleet.generator import encode
from tests.helpers import Cli, wait_for

# Compose's name for LocalStack, as the other services' environment spells it.
COMPOSE_LOCALSTACK = "localstack:4566"
# LocalStack's account for any credentials ("test" is its default).
ACCOUNT = "000000000000"
# How long a daemon's or a tool's subprocess may take for its own end after SIGTERM.
EXIT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LocalStack:
    """A running LocalStack: where it is, and clients and environments that point at it."""

    endpoint_url: str
    region: str

    @property
    def host_port(self) -> str:
        return self.endpoint_url.removeprefix("http://")

    def client_env(self) -> dict[str, str]:
        """What points a subprocess's AWS SDK at LocalStack (any credentials will do)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        }

    def client(self, service: str) -> Any:
        return _client(self.endpoint_url, self.region, service)

    def compose_env(self, service: str) -> dict[str, str]:
        """A compose service's environment with `localstack:4566` as this host reaches it."""
        env = compose_service(service)["environment"]
        return {k: v.replace(COMPOSE_LOCALSTACK, self.host_port) for k, v in env.items()}


@functools.cache
def _client(endpoint_url: str, region: str, service: str) -> Any:
    """One boto3 client per service: building one costs tens of milliseconds."""
    session = boto3.session.Session(
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 - LocalStack takes any
        region_name=region,
    )
    return session.client(service, endpoint_url=endpoint_url)


def endpoint_url() -> str:
    """LOCALSTACK_ENDPOINT_URL, else where the host run listens (compose's published port)."""
    return os.environ.get("LOCALSTACK_ENDPOINT_URL") or Service.from_compose().endpoint_url


def http_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - our URL
        return json.loads(response.read())


def queue_depth(localstack: LocalStack, queue_url: str) -> int:
    """Visible plus in-flight messages: 0 means every message was deleted."""
    return sum(queue_counts(localstack.client("sqs"), queue_url))


def drain(localstack: LocalStack, queue_url: str, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Receive and delete every message of a queue, with its message and system attributes,
    until it is empty."""
    sqs = localstack.client("sqs")
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],  # a FIFO queue's MessageGroupId among them
        ).get("Messages", [])
        if batch:
            messages.extend(batch)
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
            ]
            response = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
            assert not response.get("Failed"), response["Failed"]
        elif queue_depth(localstack, queue_url) == 0:
            return messages
        assert time.monotonic() < deadline, f"{queue_url} not drained within {timeout_s} s"


def stream_records(localstack: LocalStack, world: World) -> list[dict[str, Any]]:
    """Every record of the stream, decoded, with its shard and sequence number."""
    return decode_records(read_stream(localstack.client("kinesis"), world.stream_name))


def compose_key_set(localstack: LocalStack) -> KeySet:
    """The key set the init hook stored, read as the fleet and the tools read it."""
    secret_id = localstack.compose_env("event-processor")["AUTH_KEYS_SECRET_ID"]
    settings = Settings(
        endpoint_url=localstack.endpoint_url,
        aws_region=localstack.region,
        auth_keys_secret_id=secret_id,
        auth_keys_file=None,
    )
    return read_key_set(settings)


def world_env(world: World) -> dict[str, str]:
    """The daemon's and the tools' settings for a world other than compose's."""
    return {
        "QUEUE_URL": world.queue_url,
        "DLQ_URL": world.dlq_url,
        "STREAM_NAME": world.stream_name,
    }


class Daemon(Cli):
    """`event-processor run` as compose runs it, on a free metrics port of this host."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, metrics_port: int) -> None:
        super().__init__(process, log_path)
        self.metrics_port = metrics_port

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The daemon's /metrics, by (sample name, sorted labels)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def total(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.metrics().items() if n == name and wanted <= set(ls))

    def terminate(self, timeout_s: float = EXIT_TIMEOUT_S) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout_s)
        return code, time.monotonic() - began


@contextmanager
def daemon(localstack: LocalStack, log_path: Path, **overrides: str) -> Iterator[Daemon]:
    """The daemon with compose's environment (plus `overrides`), running for the block; killed
    at the end if the block did not stop it."""
    port = free_port()
    env = {
        **os.environ,
        **localstack.client_env(),
        **localstack.compose_env("event-processor"),
        "METRICS_PORT": str(port),
        "METRICS_HOST": "127.0.0.1",
        "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        **overrides,
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "event_processor", "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = Daemon(process, log_path, port)
    try:
        running.wait_running()
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=EXIT_TIMEOUT_S)


@dataclass(frozen=True)
class Load:
    """What one `sensor-fleet load` sent: its report line and the submissions, regenerated."""

    report: str
    docs: list[dict[str, Any]]

    def expected(self) -> dict[str, list[int]]:
        """Each valid submission's accepted event sequences (devworld.verify's expectation)."""
        return expected_sequences([encode(doc) for doc in self.docs])


def fleet_load(localstack: LocalStack, count: int, seed: int, **overrides: str) -> Load:
    """`sensor-fleet --seed S load --count N` with compose's fleet environment (FLEET_SIZE and
    INVALID_PROBABILITY included); what it sent follows from the seed (but for time_created)."""
    env = {
        **os.environ,
        **localstack.client_env(),
        **localstack.compose_env("sensor-fleet"),
        **overrides,
    }
    command = [
        sys.executable,
        "-m",
        "sensor_fleet",
        "--seed",
        str(seed),
        "load",
        "--count",
        str(count),
    ]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"sent {count} submissions" in result.stdout, result.stdout
    assert "dropped 0" in result.stdout, result.stdout
    submissions = generator.fleet_load(
        seed, int(env["FLEET_SIZE"]), float(env["INVALID_PROBABILITY"])
    )
    return Load(result.stdout.strip(), list(islice(submissions, count)))


def run_cli(
    localstack: LocalStack, world: World, *args: str, timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """An `event-processor` tool against a world, configured as the daemon is."""
    env = {**os.environ, **localstack.client_env(), **world_env(world), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "event_processor", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def wait_drained(localstack: LocalStack, world: World, timeout_s: float, daemon: Daemon) -> float:
    """Poll until the source queue is empty (every message deleted); seconds it took."""
    began = time.monotonic()

    def drained() -> bool:
        assert daemon.process.poll() is None, f"the daemon exited with {daemon.process.returncode}"
        return queue_depth(localstack, world.queue_url) == 0

    wait_for(drained, timeout_s, f"{world.queue_url} drained", interval_s=1.0)
    return time.monotonic() - began
