"""Start-up failures name what is wrong, and `check` makes run's checks without receiving."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devworld.emulator import Emulator, World
from event_processor import app, exitcodes
from event_processor.config import MASK
from tests.conftest import FAST_POLICY, settings_for
from tests.factories import encode, submission
from tests.helpers import client, eventually, queue_counts, send_bodies

# A master key long enough for the key set (signing.MIN_MASTER_KEY_BYTES); never to be printed.
MASTER_KEY = base64.b64encode(b"k" * 32).decode()


async def failed_start(settings: Any, caplog: pytest.LogCaptureFixture) -> tuple[int, Any]:
    """Run the daemon until it gives up starting: its exit code and its startup_failed record."""
    caplog.set_level(logging.ERROR, logger="event_processor")
    hooks = app.Hooks(policy=FAST_POLICY, install_signals=False)
    code = await asyncio.wait_for(app.run(settings, hooks), timeout=30)
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "startup_failed"]
    return code, record


def names_place(record: Any, world: World) -> None:
    """The message and its fields name the region and the endpoint in use."""
    assert f"region {world.region}" in record.error
    assert f"endpoint {world.endpoint_url} (--endpoint-url)" in record.error
    assert (record.region, record.endpoint) == (
        world.region,
        f"{world.endpoint_url} (--endpoint-url)",
    )


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port nothing listens on (bound without listen: connections are refused)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture
def no_endpoint_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS_ENDPOINT_URL* of the developer's shell: the region alone decides the endpoint."""
    for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_KINESIS"):
        monkeypatch.delenv(variable, raising=False)


async def test_a_missing_source_queue_by_url_names_it_and_queue_url(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A QUEUE_URL that does not exist: exit 3, naming the URL, QUEUE_URL, region, endpoint."""
    missing = world.queue_url + "-missing"
    code, record = await failed_start(settings_for(world, queue_url=missing), caplog)
    assert code == exitcodes.STARTUP_FAILED
    assert f"source queue {missing} does not exist (QUEUE_URL / --queue-url;" in record.error
    assert (record.resource, record.setting) == (
        f"source queue {missing}",
        "QUEUE_URL / --queue-url",
    )
    names_place(record, world)


async def test_a_missing_source_queue_by_name_names_it_and_queue_name(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A QUEUE_NAME that GetQueueUrl does not find: named, with QUEUE_NAME, not QUEUE_URL."""
    name = f"no-such-queue-{uuid.uuid4().hex[:8]}"
    code, record = await failed_start(settings_for(world, queue_url=None, queue_name=name), caplog)
    assert code == exitcodes.STARTUP_FAILED
    assert f"source queue {name} does not exist (QUEUE_NAME / --queue-name;" in record.error
    assert "QUEUE_URL" not in record.error
    names_place(record, world)


async def test_a_missing_dlq_is_told_from_a_missing_source_queue(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A DLQ_URL that does not exist is said to be the DLQ, named by DLQ_URL."""
    missing = world.dlq_url + "-missing"
    code, record = await failed_start(settings_for(world, dlq_url=missing), caplog)
    assert code == exitcodes.STARTUP_FAILED
    assert f"DLQ {missing} does not exist (DLQ_URL / --dlq-url;" in record.error
    assert "source queue" not in record.error
    names_place(record, world)


async def test_a_missing_stream_names_it_and_stream_name(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A STREAM_NAME that does not exist: named, with STREAM_NAME and the fix."""
    code, record = await failed_start(settings_for(world, stream_name="no-such-stream"), caplog)
    assert code == exitcodes.STARTUP_FAILED
    assert "stream no-such-stream does not exist (STREAM_NAME / --stream-name;" in record.error
    assert "create the stream" in record.error
    names_place(record, world)


async def test_a_dlq_smaller_than_the_source_names_both_sizes_and_the_fix(
    emulator: Emulator, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A DLQ whose MaximumMessageSize is below the source's: both sizes, DLQ_URL, the command."""
    client(emulator, "sqs").set_queue_attributes(
        QueueUrl=world.dlq_url, Attributes={"MaximumMessageSize": "1024"}
    )
    code, record = await failed_start(settings_for(world), caplog)
    assert code == exitcodes.STARTUP_FAILED
    assert f"DLQ {world.dlq_url} accepts at most 1024 bytes (MaximumMessageSize)" in record.error
    assert "below the source queue's 1048576" in record.error
    assert "(DLQ_URL / --dlq-url;" in record.error
    assert "MaximumMessageSize=1048576" in record.error
    names_place(record, world)


@pytest.mark.parametrize(
    ("source_fifo", "source_kind", "dlq_kind"),
    [(True, "FIFO", "standard"), (False, "standard", "FIFO")],
)
async def test_a_dlq_of_another_kind_than_the_source_is_refused(
    make_world: Any,
    caplog: pytest.LogCaptureFixture,
    source_fifo: bool,
    source_kind: str,
    dlq_kind: str,
) -> None:
    """A FIFO source with a standard DLQ, or the reverse: refused, both kinds and DLQ_URL named."""
    source = make_world(fifo=source_fifo)
    other = make_world(fifo=not source_fifo)
    settings = settings_for(source, dlq_url=other.dlq_url)
    code, record = await failed_start(settings, caplog)
    assert code == exitcodes.STARTUP_FAILED
    assert (
        f"DLQ {other.dlq_url} is a {dlq_kind} queue but the source queue is {source_kind}"
        in record.error
    )
    assert f"a {source_kind} source needs a {source_kind} DLQ" in record.error
    assert "(DLQ_URL / --dlq-url;" in record.error
    names_place(record, source)
    # `check` says the same, on the DLQ's line.
    out = io.StringIO()
    assert await app.check(settings, out, FAST_POLICY) == exitcodes.STARTUP_FAILED
    assert f"is a {dlq_kind} queue but the source queue is {source_kind}" in out.getvalue()


@pytest.mark.usefixtures("no_endpoint_env")
async def test_an_unknown_region_without_an_endpoint_is_said_to_be_one(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """AWS_REGION=xx-nowhere-9 and no endpoint URL: "unknown region", not a missing queue
    (and no call is made: the region is judged before any)."""
    settings = settings_for(world, endpoint_url=None, aws_region="xx-nowhere-9")
    code, record = await failed_start(settings, caplog)
    assert code == exitcodes.STARTUP_FAILED
    assert "region xx-nowhere-9 is an unknown region" in record.error
    assert "AWS_REGION or AWS_DEFAULT_REGION / --aws-region" in record.error
    assert f"source queue {world.queue_url}" in record.error
    assert "endpoint AWS's public endpoint" in record.error
    assert "does not exist" not in record.error


async def test_with_an_endpoint_set_a_strange_region_is_not_called_unknown(
    world: World, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """With an endpoint URL (an emulator may name regions as it likes), the region is named
    but not judged; here the endpoint's own failure is what is reported."""
    endpoint = f"http://127.0.0.1:{closed_port}"
    settings = settings_for(world, endpoint_url=endpoint, aws_region="xx-nowhere-9")
    code, record = await failed_start(settings, caplog)
    assert code == exitcodes.STARTUP_FAILED
    assert "unknown region" not in record.error
    assert "region xx-nowhere-9" in record.error
    assert f"endpoint {endpoint} (--endpoint-url)" in record.error


async def test_an_unreachable_endpoint_names_it_and_the_queue(
    world: World, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listening at the endpoint: "cannot be reached", the endpoint, the queue and
    the fix, not "does not exist"."""
    endpoint = f"http://127.0.0.1:{closed_port}"
    code, record = await failed_start(settings_for(world, endpoint_url=endpoint), caplog)
    assert code == exitcodes.STARTUP_FAILED
    assert f"source queue {world.queue_url} cannot be reached" in record.error
    assert "(QUEUE_URL / --queue-url;" in record.error
    assert f"endpoint {endpoint} (--endpoint-url)" in record.error
    assert "is the emulator or LocalStack running?" in record.error
    assert "does not exist" not in record.error


async def test_a_metrics_port_taken_names_the_port_and_its_settings(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A metrics port already bound: exit 3, naming host:port, METRICS_PORT and the fix."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, record = await failed_start(settings_for(world, metrics_port=port), caplog)
    assert code == exitcodes.STARTUP_FAILED
    assert f"metrics port {port} on 127.0.0.1 cannot serve metrics" in record.error
    assert "METRICS_PORT / --metrics-port" in record.error
    assert record.resource == f"metrics port {port} on 127.0.0.1"


async def test_an_invalid_key_set_file_names_the_file_and_its_setting(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalid key set exits 2 naming AUTH_KEYS_FILE and the path, never the key."""
    short = base64.b64encode(b"too short").decode()
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": {"k1": short}}))
    settings = settings_for(world, auth_mode="enforce", auth_keys_file=keys_file)
    code, record = await failed_start(settings, caplog)
    assert code == exitcodes.USAGE
    assert f"key set file {keys_file} is not a valid key set: key k1 is 9 bytes" in record.error
    assert "AUTH_KEYS_FILE / --auth-keys-file" in record.error
    assert short not in caplog.text


async def test_an_unreadable_key_file_is_named_while_run_waits_for_it(
    world: World, tmp_path: Path, daemon: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A key set file not there (yet): run waits, not ready, saying which file and setting."""
    caplog.set_level(logging.WARNING, logger="event_processor")
    missing = tmp_path / "keys.json"
    running = await daemon(settings_for(world, auth_mode="enforce", auth_keys_file=missing))

    def warnings() -> list[Any]:
        return [r for r in caplog.records if getattr(r, "action", None) == "keyset_unreadable"]

    await eventually(lambda: bool(warnings()), timeout_s=10)
    assert not running.worker.ready
    assert warnings()[0].error.startswith(
        f"key set file {missing} cannot be read: No such file or directory "
        "(AUTH_KEYS_FILE / --auth-keys-file). Fix: "
    )
    assert await running.stop() == exitcodes.OK


# --- event-processor check -------------------------------------------------------------------


async def check(settings: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = await asyncio.wait_for(app.check(settings, out, FAST_POLICY), timeout=30)
    return code, out.getvalue()


def check_line(output: str, name: str) -> str:
    """The report's line for one check (status first)."""
    [line] = [
        line.strip()
        for line in output.splitlines()
        if line.startswith("  ") and line.split()[1:2] == name.split()[:1]
    ]
    return line


async def test_check_passes_lists_each_check_and_masks_a_url_password(
    emulator: Emulator, world: World
) -> None:
    """All fit: exit 0, the effective settings (a URL's password masked) and one ok line a
    check, with what was read."""
    port = world.queue_url.split("://", 1)[1].split("/", 1)[0]
    with_password = world.queue_url.replace(port, f"reader:hunter2@{port}")
    code, output = await check(settings_for(world, queue_url=with_password))
    assert code == exitcodes.OK, output
    assert "hunter2" not in output
    masked = with_password.replace("hunter2", MASK)
    assert re.search(rf"^  queue_url +{re.escape(masked)}$", output, re.MULTILINE), output
    assert check_line(output, "region").startswith(f"ok      region        {world.region}")
    assert "MaximumMessageSize 1048576" in check_line(output, "source queue")
    assert check_line(output, "stream").endswith(f"{world.stream_name}: ACTIVE, 2 open shards")
    assert "RedrivePolicy sends here after 5 receives" in check_line(output, "DLQ")
    assert check_line(output, "metrics port").startswith("skipped")
    assert check_line(output, "key set").startswith("skipped")
    assert output.endswith("all passed: `run` with these settings would start\n")


async def test_check_on_a_fifo_world_says_fifo_and_warns_of_groups_spread_over_shards(
    make_world: Any,
) -> None:
    """A FIFO source and DLQ pass; keyed by submission, the source's line warns that the
    stream keeps order per submission only (and `run` would still start)."""
    world = make_world(fifo=True)
    code, output = await check(settings_for(world))
    assert code == exitcodes.OK, output
    assert check_line(output, "source queue").startswith("ok")
    assert ": FIFO, MaximumMessageSize" in check_line(output, "source queue")
    assert ": FIFO, MaximumMessageSize" in check_line(output, "DLQ")
    code, output = await check(settings_for(world, partition_key="submission_id"))
    assert code == exitcodes.OK, output
    line = check_line(output, "source queue")
    assert line.startswith("warn")
    assert "PARTITION_KEY=submission_id spreads each message group over shards" in line


async def test_check_reports_a_missing_stream_and_exits_3(world: World) -> None:
    """A missing stream: its line FAILED with run's message, the others still checked, exit 3."""
    code, output = await check(settings_for(world, stream_name="no-such-stream"))
    assert code == exitcodes.STARTUP_FAILED
    stream = check_line(output, "stream")
    assert stream.startswith("FAILED  stream")
    assert "stream no-such-stream does not exist (STREAM_NAME / --stream-name;" in stream
    assert check_line(output, "source queue").startswith("ok")
    assert check_line(output, "DLQ").startswith("ok")
    assert output.endswith("1 FAILED: `run` with these settings would exit 3\n")


async def test_check_reads_a_key_file_and_reports_its_size_never_a_key(
    world: World, tmp_path: Path
) -> None:
    """AUTH_MODE=enforce with a key file: ok with the number of keys; no key in the output."""
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": {"k1": MASTER_KEY, "k2": MASTER_KEY}}))
    settings = settings_for(world, auth_mode="enforce", auth_keys_file=keys_file)
    code, output = await check(settings)
    assert code == exitcodes.OK, output
    assert (
        check_line(output, "key set")
        == f"ok      key set       key set file {keys_file}: valid, 2 keys"
    )
    assert MASTER_KEY not in output


async def test_check_exits_2_for_an_invalid_key_set_as_run_would(
    world: World, tmp_path: Path
) -> None:
    """An invalid key set is a settings error for check as for run: exit 2."""
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('{"keys": {}}')
    code, output = await check(settings_for(world, auth_mode="enforce", auth_keys_file=keys_file))
    assert code == exitcodes.USAGE
    assert "is not a valid key set" in check_line(output, "key set")


async def test_check_fails_an_unreadable_key_file_that_run_would_wait_for(
    world: World, tmp_path: Path
) -> None:
    """A key set file that is not there: FAILED, exit 3 (run would wait, not ready)."""
    missing = tmp_path / "keys.json"
    code, output = await check(settings_for(world, auth_mode="enforce", auth_keys_file=missing))
    assert code == exitcodes.STARTUP_FAILED
    assert f"key set file {missing} cannot be read" in check_line(output, "key set")


async def test_check_binds_the_metrics_port_and_releases_it(world: World) -> None:
    """A free metrics port is bound and released: check passes, and the port is free after."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, output = await check(settings_for(world, metrics_port=port))
    assert code == exitcodes.OK, output
    assert check_line(output, "metrics port").startswith(f"ok      metrics port  127.0.0.1:{port}")
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # raises if check still held it


async def test_check_receives_nothing(emulator: Emulator, world: World) -> None:
    """After check, the queue's messages are all visible and were never received."""
    await asyncio.to_thread(
        send_bodies, emulator, world.queue_url, [encode(submission()) for _ in range(3)]
    )
    code, output = await check(settings_for(world))
    assert code == exitcodes.OK, output
    assert "3 visible, 0 in flight" in check_line(output, "source queue")
    assert await asyncio.to_thread(queue_counts, emulator, world.queue_url) == (3, 0)
    received = client(emulator, "sqs").receive_message(
        QueueUrl=world.queue_url,
        MaxNumberOfMessages=10,
        MessageSystemAttributeNames=["ApproximateReceiveCount"],
    )["Messages"]
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in received] == ["1", "1", "1"]
