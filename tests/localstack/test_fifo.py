"""A FIFO world on LocalStack: the init hook with FIFO=true makes it, the daemon drains a
backlog of many devices' signed submissions sent in order with ~5% broken fields, and the
stream holds every valid event once, in order across each device's submissions; the FIFO
DLQ holds the rejected ones in their device's group; inspect and redrive work on it."""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from devworld.emulator import World, delete_world
from devworld.verify import expected_device_order, verify, verify_device_order
from event_processor.contract.letters import read_event_letter, string_attribute
from event_processor.contract.parse import parse_submission
from event_processor.contract.rules import Rejection
from event_processor.tools.aws import queue_counts
from sensor_fleet.generator import encode, fleet_submissions
from tests.awslocal import awslocal
from tests.helpers import wait_for
from tests.localstack.support import (
    LocalStack,
    daemon,
    drain,
    fleet_load,
    run_cli,
    stream_records,
    wait_drained,
)
from tests.static.support import run_init_script

pytestmark = pytest.mark.localstack

SUBMISSIONS = 400
DEVICES = 40
INVALID = "0.05"
SEED = 22
DRAIN_TIMEOUT_S = 600.0


def content(doc: Any) -> str:
    """A submission without its time_created (the one field a seeded load does not repeat)."""
    if isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k != "time_created"}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()


@pytest.fixture(scope="module")
def fifo_world(localstack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A FIFO queue and DLQ and a 2-shard stream of this module's own, made by the init hook
    with FIFO=true (through the venv's AWS CLI on LocalStack's endpoint); deleted afterwards."""
    suffix = uuid.uuid4().hex[:8]
    names = {
        "QUEUE_NAME": f"tier-fifo-{suffix}",
        "DLQ_NAME": f"tier-fifo-{suffix}-dlq",
        "STREAM_NAME": f"tier-fifo-{suffix}",
        "AUTH_KEYS_SECRET_NAME": localstack.compose_env("localstack")["AUTH_KEYS_SECRET_NAME"],
    }
    with awslocal(tmp_path_factory.mktemp("awslocal")) as shim_dir:
        hook = run_init_script(localstack.client_env(), shim_dir, FIFO="true", **names)
    assert hook.returncode == 0, hook.stdout + hook.stderr
    assert "(both FIFO)" in hook.stderr
    sqs, kinesis = localstack.client("sqs"), localstack.client("kinesis")
    world = World(
        endpoint_url=localstack.endpoint_url,
        region=localstack.region,
        queue_url=sqs.get_queue_url(QueueName=names["QUEUE_NAME"] + ".fifo")["QueueUrl"],
        dlq_url=sqs.get_queue_url(QueueName=names["DLQ_NAME"] + ".fifo")["QueueUrl"],
        stream_name=names["STREAM_NAME"],
        fifo=True,
    )
    yield world
    delete_world(sqs, kinesis, world)


def wait_settled(localstack: LocalStack, queue_url: str, timeout_s: float = 60.0) -> None:
    """Poll until a queue's (visible, in flight) counts read the same three times in a row."""
    reads: list[tuple[int, int]] = []

    def settled() -> bool:
        reads.append(queue_counts(localstack.client("sqs"), queue_url))
        return len(reads) >= 3 and len(set(reads[-3:])) == 1

    wait_for(settled, timeout_s, f"{queue_url}'s counts settled", interval_s=1.0)


def test_fifo_world_on_localstack(
    localstack: LocalStack, fifo_world: World, tmp_path: Path
) -> None:
    """No loss, each device's submissions in the stream in the order sent, the rejected ones in
    the FIFO DLQ in their device's group; inspect reads the DLQ, redrive moves its submissions
    back (each rejected again by the running daemon) and ends by itself."""
    world = fifo_world
    settings = {"QUEUE_URL": world.queue_url, "DLQ_URL": world.dlq_url}
    with daemon(
        localstack, tmp_path / "daemon.log", **settings, STREAM_NAME=world.stream_name
    ) as running:
        load = fleet_load(localstack, SUBMISSIONS, SEED, QUEUE_URL=world.queue_url,
                          FLEET_SIZE=str(DEVICES), INVALID_PROBABILITY=INVALID)  # fmt: skip
        took = wait_drained(localstack, world, DRAIN_TIMEOUT_S, running)
        records = stream_records(localstack, world)
        bodies = [encode(doc) for doc in load.docs]
        result = verify(records, load.expected())
        order = verify_device_order(records, expected_device_order(bodies))
        print(f"\n[fifo] {load.report}; drained in {took:.0f} s")
        print(f"[fifo] {result.summary()}")
        print(f"[fifo] device order: {order.summary()}")
        assert result.ok, result.summary()
        assert result.records > 2_000
        assert order.ok, order.out_of_order[:5]
        assert order.pairs > SUBMISSIONS // 2
        assert running.total("event_processor_dlq_messages_sent_total") > 0

        # The scan counts what SQS shows at its start and end: let the DLQ's counts settle
        # first (the same three reads a second apart), so that the comparison below is one of
        # the scan against the queue, not against letters still on their way.
        wait_settled(localstack, world.dlq_url)
        inspected = run_cli(localstack, world, "dlq", "inspect", "--json")
        assert inspected.returncode == 0, inspected.stderr
        report = json.loads(inspected.stdout)
        print(
            f"[fifo] dlq inspect: read {report['read']}, unreachable {report['unreachable']},"
            f" complete {report['complete']}, by kind {report['by_kind']}"
        )
        assert report["read"] > 0
        assert report["read"] + report["unreachable"] == report["approximate_visible"]

        redriven = run_cli(localstack, world, "dlq", "redrive", "--json", timeout_s=300)
        assert redriven.returncode == 0, redriven.stdout + redriven.stderr
        summary = json.loads(redriven.stdout)
        print(
            f"[fifo] dlq redrive: read {summary['read']}, moved {summary['moved']}, rejected again"
            f" {summary['rejected_again']}, skipped {summary['skipped']}, unreachable"
            f" {summary['unreachable']}, complete {summary['complete']}, settled"
            f" {summary['settled']}"
        )
        assert summary["moved"] > 0
        assert summary["failed"] == 0
        assert summary["rejected_again"] == summary["moved"], "every moved one is still invalid"
        # Every letter inspect read, redrive read too (the first LocalStack run of this test
        # caught a redrive that stopped 13 letters short and called itself complete).
        assert summary["complete"]
        assert summary["read"] >= report["read"]
        if report["complete"]:
            assert summary["moved"] == report["by_kind"]["submission"]
            assert summary["skipped_event_letters"] == report["by_kind"]["event"]
        wait_drained(localstack, world, DRAIN_TIMEOUT_S, running)
        code, _ = running.terminate()
    assert code == 0

    sent_by = {
        content(doc): device
        for device, doc in itertools.islice(
            fleet_submissions(SEED, DEVICES, float(INVALID)), SUBMISSIONS
        )
    }
    letters = drain(localstack, world.dlq_url)
    submissions: Counter[str] = Counter()
    events = 0
    for message in letters:
        group = message["Attributes"]["MessageGroupId"]
        attributes = message.get("MessageAttributes", {})
        letter = read_event_letter(message["Body"], attributes)
        if letter is None:
            doc = orjson.loads(base64.b64decode(message["Body"]))
            assert group == sent_by[content(doc)], "a rejected submission in its sender's group"
            submissions[str(string_attribute(attributes, "reason"))] += 1
        else:
            assert group == letter.device_id, "an event letter in its submission's group"
            events += len(letter.events)
    rejected = [parse_submission(body) for body in bodies]
    want_submissions = Counter(str(r.reason) for r in rejected if isinstance(r, Rejection))
    want_events = sum(len(r.rejected) for r in rejected if not isinstance(r, Rejection))
    print(f"[fifo] DLQ: {submissions.total()} submissions {dict(submissions)}, {events} events")
    assert submissions == want_submissions
    assert events == want_events
    assert want_submissions.total() > 0
    assert want_events > 0
