"""The embedded emulator: the world it builds, and moto's thread-safety patches under real load.

Uses the session `emulator` and the `make_world` fixtures from tests/conftest.py: every world
gets unique names and is deleted at teardown.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from moto.sqs.models import Queue

from devworld import emulator as emulator_module
from devworld.emulator import Emulator, World, patch_moto, read_stream

PUT_THREADS = 32
PUT_CALLS_PER_THREAD = 10
RECORDS_PER_CALL = 100

SQS_PRODUCERS = 8
SQS_CONSUMERS = 16
# Batches each producer sends before the consumers start (a deep queue makes moto's O(depth)
# list rebuilds slow, widening the race windows), then while they run.
SQS_PRELOAD_BATCHES = 30
SQS_LIVE_BATCHES = 10
SQS_BATCH = 10
# Long enough that no message can become visible again during the test: a redelivery is a bug.
SQS_VISIBILITY_S = 300
# Upper bound for any one concurrency scenario; each normally takes a few seconds.
SCENARIO_DEADLINE_S = 60.0
# CPython switches threads every 5 ms by default; switching every 0.1 ms makes moto's races show
# up on every run instead of now and then (unlocked: ~560 lost deletes and duplicate receives).
RACY_SWITCH_INTERVAL_S = 1e-4


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Make the interpreter switch threads often, so unsynchronised code loses updates reliably."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(RACY_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def run_together(workers: list[Callable[[], None]]) -> None:
    """Run the workers in threads released at once by a barrier; re-raise the first failure."""
    barrier = threading.Barrier(len(workers))

    def start(worker: Callable[[], None]) -> None:
        barrier.wait(timeout=SCENARIO_DEADLINE_S)
        worker()

    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        futures = [pool.submit(start, worker) for worker in workers]
        for future in futures:
            future.result(timeout=2 * SCENARIO_DEADLINE_S)


def test_create_world_builds_queue_dlq_and_active_stream(
    emulator: Emulator, make_world: Callable[..., World]
) -> None:
    """create_world makes a queue redriving to the DLQ and an ACTIVE stream with the shards asked."""
    world = make_world(
        queue_name="cw-queue",
        dlq_name="cw-dlq",
        stream_name="cw-stream",
        shard_count=3,
        max_receive_count=4,
        visibility_timeout_s=45,
    )
    sqs = emulator.boto3_client("sqs")
    kinesis = emulator.boto3_client("kinesis")

    assert world == World(
        endpoint_url=emulator.endpoint_url,
        region="eu-west-1",
        queue_url=world.queue_url,
        dlq_url=world.dlq_url,
        stream_name="cw-stream",
    )
    assert world.queue_url.endswith("/cw-queue")
    assert world.dlq_url.endswith("/cw-dlq")
    attributes = sqs.get_queue_attributes(QueueUrl=world.queue_url, AttributeNames=["All"])[
        "Attributes"
    ]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=world.dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn
    assert int(redrive["maxReceiveCount"]) == 4
    assert attributes["VisibilityTimeout"] == "45"

    summary = kinesis.describe_stream_summary(StreamName="cw-stream")["StreamDescriptionSummary"]
    assert summary["StreamStatus"] == "ACTIVE"
    assert summary["OpenShardCount"] == 3
    assert len(kinesis.list_shards(StreamName="cw-stream")["Shards"]) == 3


def test_create_world_fifo_makes_both_queues_fifo(
    emulator: Emulator, make_world: Callable[..., World]
) -> None:
    """A FIFO world: queue and DLQ are FIFO, named *.fifo, and the queue redrives to the DLQ."""
    world = make_world(queue_name="cwf-queue", dlq_name="cwf-dlq", fifo=True)
    sqs = emulator.boto3_client("sqs")

    assert world.fifo
    assert world.queue_url.endswith("/cwf-queue.fifo")
    assert world.dlq_url.endswith("/cwf-dlq.fifo")
    queue, dlq = (
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        for url in (world.queue_url, world.dlq_url)
    )
    assert queue["FifoQueue"] == dlq["FifoQueue"] == "true"
    assert json.loads(queue["RedrivePolicy"])["deadLetterTargetArn"] == dlq["QueueArn"]


def test_client_env_points_at_the_emulator(emulator: Emulator) -> None:
    """client_env carries the endpoint, the region and dummy credentials for a subprocess."""
    assert emulator.client_env() == {
        "AWS_ENDPOINT_URL": emulator.endpoint_url,
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    assert emulator.endpoint_url.startswith("http://127.0.0.1:")
    assert not emulator.endpoint_url.endswith(":0")


def test_delete_world_deletes_its_queues_and_stream_and_skips_what_is_gone(
    emulator: Emulator,
) -> None:
    """delete_world removes the queue, DLQ and stream; a second call (all gone) is quiet."""
    suffix = uuid.uuid4().hex[:8]
    world = emulator.create_world(
        queue_name=f"del-q-{suffix}", dlq_name=f"del-dlq-{suffix}", stream_name=f"del-s-{suffix}"
    )
    sqs = emulator.boto3_client("sqs")
    kinesis = emulator.boto3_client("kinesis")

    emulator.delete_world(world)

    queue_urls = sqs.list_queues(QueueNamePrefix="del-").get("QueueUrls", [])
    assert world.queue_url not in queue_urls
    assert world.dlq_url not in queue_urls
    assert world.stream_name not in kinesis.list_streams()["StreamNames"]
    emulator.delete_world(world)  # already gone: skipped, not an error


def test_delete_world_after_the_emulator_stopped_is_a_no_op() -> None:
    """A world whose emulator has stopped is not chased: teardown after a stop does not fail."""
    with Emulator() as emu:
        world = emu.create_world(shard_count=1)
    assert not emu.started
    emu.delete_world(world)


def test_restart_starts_from_an_empty_state() -> None:
    """A new emulator resets moto's process-global state, so the default world can be made again."""
    for _ in range(2):
        with Emulator() as emu:
            world = emu.create_world(shard_count=1)
            emu.boto3_client("sqs").send_message(QueueUrl=world.queue_url, MessageBody="x")
            attributes = emu.boto3_client("sqs").get_queue_attributes(
                QueueUrl=world.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
            assert attributes["ApproximateNumberOfMessages"] == "1"


def test_patch_moto_is_idempotent() -> None:
    """A second patch_moto() leaves the already-patched methods in place (no double wrapping)."""
    from moto.kinesis.models import Shard  # noqa: PLC0415
    from moto.sqs.models import SQSBackend  # noqa: PLC0415

    patch_moto()
    before = (SQSBackend.receive_message, SQSBackend.send_message, Shard.put_record)
    patch_moto()
    assert (SQSBackend.receive_message, SQSBackend.send_message, Shard.put_record) == before
    assert emulator_module._PATCHED.is_set()


@pytest.mark.usefixtures("frequent_thread_switches")
def test_concurrent_put_records_to_one_shard_are_all_stored(
    emulator: Emulator, make_world: Callable[..., World]
) -> None:
    """32 threads of PutRecords into one shard: every record stored, sequence numbers increasing."""
    world = make_world(shard_count=1)
    sent: dict[int, list[bytes]] = {}

    def producer(thread_no: int) -> Callable[[], None]:
        def run() -> None:
            kinesis = emulator.boto3_client("kinesis")
            mine = sent.setdefault(thread_no, [])
            for call in range(PUT_CALLS_PER_THREAD):
                batch = [
                    f"{thread_no}:{call * RECORDS_PER_CALL + i}".encode()
                    for i in range(RECORDS_PER_CALL)
                ]
                response = kinesis.put_records(
                    StreamName=world.stream_name,
                    Records=[{"Data": data, "PartitionKey": f"t{thread_no}"} for data in batch],
                )
                assert response["FailedRecordCount"] == 0
                mine.extend(batch)

        return run

    run_together([producer(n) for n in range(PUT_THREADS)])

    records = read_stream(emulator.boto3_client("kinesis"), world.stream_name)
    expected = PUT_THREADS * PUT_CALLS_PER_THREAD * RECORDS_PER_CALL
    assert len(records) == expected
    assert Counter(r["data"] for r in records) == Counter(
        d for batch in sent.values() for d in batch
    )
    sequence_numbers = [int(r["sequence_number"]) for r in records]
    assert len(set(sequence_numbers)) == expected
    assert all(a < b for a, b in itertools.pairwise(sequence_numbers))
    # One shard keeps each producer's records in the order that producer sent them.
    for thread_no, batch in sent.items():
        assert [r["data"] for r in records if r["partition_key"] == f"t{thread_no}"] == batch


@pytest.mark.usefixtures("frequent_thread_switches")
def test_concurrent_send_receive_delete_delivers_each_message_once(
    emulator: Emulator, make_world: Callable[..., World]
) -> None:
    """Concurrent SendMessageBatch, ReceiveMessage and DeleteMessageBatch: once each, none left."""
    world = make_world(visibility_timeout_s=SQS_VISIBILITY_S)
    expected = SQS_PRODUCERS * (SQS_PRELOAD_BATCHES + SQS_LIVE_BATCHES) * SQS_BATCH
    received: Counter[str] = Counter()
    received_lock = threading.Lock()
    all_received = threading.Event()

    def producer(producer_no: int, first_batch: int, batches: int) -> Callable[[], None]:
        def run() -> None:
            sqs = emulator.boto3_client("sqs")
            for batch_no in range(first_batch, first_batch + batches):
                entries = [
                    {"Id": str(i), "MessageBody": f"{producer_no}:{batch_no}:{i}"}
                    for i in range(SQS_BATCH)
                ]
                response = sqs.send_message_batch(QueueUrl=world.queue_url, Entries=entries)
                assert not response.get("Failed")

        return run

    def consumer() -> None:
        sqs = emulator.boto3_client("sqs")
        deadline = time.monotonic() + SCENARIO_DEADLINE_S
        while not all_received.is_set() and time.monotonic() < deadline:
            messages = sqs.receive_message(
                QueueUrl=world.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", [])
            if not messages:
                continue
            with received_lock:
                received.update(m["Body"] for m in messages)
                if len(received) >= expected:
                    all_received.set()
            response = sqs.delete_message_batch(
                QueueUrl=world.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
            assert not response.get("Failed")
            assert len(response["Successful"]) == len(messages)

    run_together([producer(n, 0, SQS_PRELOAD_BATCHES) for n in range(SQS_PRODUCERS)])
    run_together(
        [producer(n, SQS_PRELOAD_BATCHES, SQS_LIVE_BATCHES) for n in range(SQS_PRODUCERS)]
        + [consumer] * SQS_CONSUMERS
    )

    duplicates = {body: n for body, n in received.items() if n > 1}
    assert not duplicates
    assert len(received) == expected
    attributes = emulator.boto3_client("sqs").get_queue_attributes(
        QueueUrl=world.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_long_poll_waits_outside_the_lock(
    emulator: Emulator, make_world: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a 2 s long poll waits, a SendMessage completes at once and the poll returns it."""
    world = make_world()
    waiting = threading.Event()
    original_wait: Any = Queue.wait_for_messages

    def observed_wait(self: Any, timeout: float) -> None:
        waiting.set()
        original_wait(self, timeout)

    monkeypatch.setattr(Queue, "wait_for_messages", observed_wait)
    poller = emulator.boto3_client("sqs")
    sender = emulator.boto3_client("sqs")

    def long_poll() -> tuple[list[dict[str, Any]], float]:
        started = time.monotonic()
        response = poller.receive_message(QueueUrl=world.queue_url, WaitTimeSeconds=2)
        return response.get("Messages", []), time.monotonic() - started

    with ThreadPoolExecutor(max_workers=1) as pool:
        polling = pool.submit(long_poll)
        assert waiting.wait(timeout=5), "the long poll never started waiting"
        started = time.monotonic()
        sender.send_message(QueueUrl=world.queue_url, MessageBody="wake up")
        send_s = time.monotonic() - started
        messages, poll_s = polling.result(timeout=10)

    assert send_s < 0.5, f"SendMessage took {send_s:.2f} s behind the long poll"
    assert [m["Body"] for m in messages] == ["wake up"]
    assert poll_s < 1.9, f"the long poll returned after {poll_s:.2f} s, not on the message"


def test_long_poll_on_an_empty_queue_waits_its_full_time(
    emulator: Emulator, make_world: Callable[..., World]
) -> None:
    """A long poll that gets nothing still returns empty only after WaitTimeSeconds."""
    world = make_world()
    sqs = emulator.boto3_client("sqs")
    started = time.monotonic()
    response = sqs.receive_message(QueueUrl=world.queue_url, WaitTimeSeconds=1)
    elapsed = time.monotonic() - started
    assert response.get("Messages", []) == []
    assert 0.9 <= elapsed < 3.0


def test_read_stream_orders_by_shard_then_sequence(
    emulator: Emulator, make_world: Callable[..., World]
) -> None:
    """read_stream returns every shard's records, shard by shard, each in sequence order."""
    world = make_world(shard_count=3)
    kinesis = emulator.boto3_client("kinesis")
    for i in range(60):
        kinesis.put_record(StreamName=world.stream_name, Data=f"{i}".encode(), PartitionKey=f"k{i}")

    records = read_stream(kinesis, world.stream_name)

    assert sorted(int(r["data"]) for r in records) == list(range(60))
    shard_ids = [r["shard_id"] for r in records]
    assert shard_ids == sorted(shard_ids)
    assert len(set(shard_ids)) > 1
    for shard_id in set(shard_ids):
        seqs = [int(r["sequence_number"]) for r in records if r["shard_id"] == shard_id]
        assert seqs == sorted(seqs)
    assert {type(r["data"]) for r in records} == {bytes}


def test_a_fifo_group_that_timed_out_in_flight_comes_back_from_its_first_message(
    emulator: Emulator, make_world: Callable[..., World]
) -> None:
    """A consumer dies with three of a group in flight, the last one extended: the group stays
    locked until all three time out, then comes back whole and in order (moto handed out the
    extended one and the rest of the group first, skipping the two before it)."""
    world = make_world(fifo=True, visibility_timeout_s=1)
    sqs = emulator.boto3_client("sqs")
    for body in map(str, range(8)):
        sqs.send_message(
            QueueUrl=world.queue_url,
            MessageBody=body,
            MessageGroupId="device",
            MessageDeduplicationId=uuid.uuid4().hex,
        )
    in_flight = sqs.receive_message(QueueUrl=world.queue_url, MaxNumberOfMessages=3)["Messages"]
    assert [m["Body"] for m in in_flight] == ["0", "1", "2"]
    sqs.change_message_visibility(
        QueueUrl=world.queue_url, ReceiptHandle=in_flight[2]["ReceiptHandle"], VisibilityTimeout=2
    )
    handed_out: list[list[str]] = []
    deadline = time.monotonic() + SCENARIO_DEADLINE_S
    while not handed_out and time.monotonic() < deadline:
        received = sqs.receive_message(
            QueueUrl=world.queue_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=30,
            WaitTimeSeconds=1,
        ).get("Messages", [])
        if received:
            handed_out.append([m["Body"] for m in received])
    assert handed_out == [[str(i) for i in range(8)]]
