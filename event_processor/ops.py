"""What the operator tools (`dlq_tools`, `tail`) share: exit codes, AWS clients, signals.

The tools are synchronous boto3: short-lived command-line tools, one call at a time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import boto3
from botocore.config import Config

from event_processor.config import Settings

# --- Exit codes (as the daemon's: 2 usage, 3 a queue or stream missing or unreachable) ---
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

Clock = Callable[[], float]


class OpsError(Exception):
    """A queue, stream or shard is missing or unreachable; the message says which."""


def region_from_env(region: str | None) -> str:
    """--aws-region, else AWS_REGION, else AWS_DEFAULT_REGION, else the daemon's default."""
    default = str(Settings.model_fields["aws_region"].default)
    return region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or default


def aws_client(service: str, *, endpoint_url: str | None, region: str | None) -> Any:
    """A boto3 client; with no endpoint URL, botocore reads AWS_ENDPOINT_URL(_SQS/_KINESIS)."""
    config = Config(
        region_name=region_from_env(region),
        # total_max_attempts counts the first call (max_attempts would count retries only).
        retries={"mode": "standard", "total_max_attempts": 3},
        connect_timeout=5,
        read_timeout=30,
    )
    return boto3.session.Session().client(service, endpoint_url=endpoint_url, config=config)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set `stop` (the tool finishes its step and ends); a second one raises."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, handle) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass(frozen=True)
class AwsOptions:
    endpoint_url: str | None = None
    region: str | None = None

    def client(self, service: str) -> Any:
        """`aws_client(service)` with these options."""
        return aws_client(service, endpoint_url=self.endpoint_url, region=self.region)
