"""Sensor authentication against the embedded emulator: the key set in its Secrets Manager (or a
file), signed, unsigned, forged and device-swapped submissions through the real daemon."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devworld.emulator import Emulator, World, free_port
from event_processor import cli, exitcodes
from event_processor.contract import signing
from event_processor.tools import inspect, redrive
from event_processor.tools.keys import read_enrolment
from tests.conftest import FAST_POLICY, settings_for
from tests.factories import encode, submission
from tests.helpers import (
    client,
    drain_queue,
    eventually,
    queue_counts,
    queue_depth,
    send_bodies,
    stream_records,
)

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
DEVICE_A = "93552c93-6e6f-48fe-bbf9-6ba6ac20c120"
DEVICE_B = "0f0e0d0c-0b0a-4908-8706-050403020100"
AUTH_RESULTS = "event_processor_auth_results_total"
# A message as sent: its body and its MessageAttributes.
Sent = tuple[str, dict[str, Any]]


def key_set_text(keys: dict[str, bytes], revoked: tuple[str, ...] = ()) -> str:
    return json.dumps(
        {
            "keys": {key_id: base64.b64encode(key).decode() for key_id, key in keys.items()},
            "revoked_devices": list(revoked),
        }
    )


class Secret:
    """A key set secret in the emulator's Secrets Manager, with a name no other test uses."""

    def __init__(self, emulator: Emulator) -> None:
        self.client = client(emulator, "secretsmanager")
        self.name = f"sensor-keys-{uuid.uuid4().hex[:8]}"

    def put(self, text: str) -> None:
        """Create the secret, or store a new current version of it."""
        try:
            self.client.put_secret_value(SecretId=self.name, SecretString=text)
        except self.client.exceptions.ResourceNotFoundException:
            self.client.create_secret(Name=self.name, SecretString=text)

    def delete(self) -> None:
        try:
            self.client.delete_secret(SecretId=self.name, ForceDeleteWithoutRecovery=True)
        except self.client.exceptions.ResourceNotFoundException:
            return


@pytest.fixture
def secret(emulator: Emulator) -> Iterator[Secret]:
    made = Secret(emulator)
    try:
        yield made
    finally:
        made.delete()


def signed(doc: dict[str, Any], *, device: str, key_id: str = "k1", master: bytes = K1) -> Sent:
    """(body, attributes) of `doc` signed by `device` with its key derived from `master`."""
    body = encode(doc)
    device_key = signing.derive_device_key(master, device)
    return body, signing.signature_attributes(device_key, key_id, device, body)


def send(emulator: Emulator, queue_url: str, messages: list[Sent]) -> None:
    """Send with the fleet's Sender, each body with its attributes; all must be accepted."""
    send_bodies(emulator, queue_url, [body for body, _ in messages], [a for _, a in messages])


async def drained(emulator: Emulator, world: World) -> None:
    await eventually(lambda: asyncio.to_thread(lambda: queue_depth(emulator, world.queue_url) == 0))


def published_submissions(emulator: Emulator, world: World) -> dict[str, set[str]]:
    """Submission id -> the devices whose records the stream holds for it."""
    published: dict[str, set[str]] = {}
    for record in stream_records(emulator, world):
        published.setdefault(record["submission_id"], set()).add(record["device_id"])
    return published


def dead_letter_reasons(emulator: Emulator, world: World) -> dict[str, str]:
    """Body -> the reason attribute of each rejected submission in the DLQ."""
    return {
        m["Body"]: m["MessageAttributes"]["reason"]["StringValue"]
        for m in drain_queue(emulator, world.dlq_url)
    }


async def test_enforce_publishes_signed_submissions_and_rejects_the_rest(
    emulator: Emulator, world: World, secret: Secret, daemon: Any
) -> None:
    """Signed: published. Unsigned, malformed, forged, another device's key, device-swapped,
    unknown key, revoked: each whole in the DLQ with its reason, nothing of it in the stream."""
    secret.put(key_set_text({"k1": K1}, revoked=("11111111-2222-4333-8444-555555555555",)))
    genuine = [signed(submission(device_id=DEVICE_A), device=DEVICE_A) for _ in range(5)]
    stolen_key = signing.derive_device_key(K1, DEVICE_A)
    as_b = submission(device_id=DEVICE_B)
    as_b_body = encode(as_b)
    revoked = "11111111-2222-4333-8444-555555555555"
    bad = {
        "signature_missing": (encode(submission(device_id=DEVICE_A)), {}),
        "signature_malformed": (
            encode(submission(device_id=DEVICE_A)),
            {"sensor-signature": {"DataType": "String", "StringValue": f"v1;d={DEVICE_A}"}},
        ),
        # The thief signs as B with A's key: the signature does not hold for B.
        "signature_invalid": (
            as_b_body,
            signing.signature_attributes(stolen_key, "k1", DEVICE_B, as_b_body),
        ),
        # The thief signs as A (valid) but the body claims B.
        "device_mismatch": signed(submission(device_id=DEVICE_B), device=DEVICE_A),
        "unknown_key": signed(submission(device_id=DEVICE_A), device=DEVICE_A, key_id="k9"),
        "device_revoked": signed(submission(device_id=revoked), device=revoked),
    }
    await asyncio.to_thread(send, emulator, world.queue_url, genuine + list(bad.values()))

    running = await daemon(
        settings_for(world, auth_mode="enforce", auth_keys_secret_id=secret.name), FAST_POLICY
    )
    await drained(emulator, world)
    assert await running.stop() == exitcodes.OK

    published = await asyncio.to_thread(published_submissions, emulator, world)
    genuine_ids = {json.loads(base64.b64decode(body))["submission_id"] for body, _ in genuine}
    assert set(published) == genuine_ids
    reasons = await asyncio.to_thread(dead_letter_reasons, emulator, world)
    assert reasons == {body: reason for reason, (body, _) in bad.items()}
    for reason in bad:
        assert running.metric(AUTH_RESULTS, {"result": reason}) == 1, reason
        assert running.metric("event_processor_submissions_rejected_total", {"reason": reason}) == 1
    assert running.metric(AUTH_RESULTS, {"result": "ok"}) == 5
    assert running.metric("event_processor_auth_verified_total", {"key_id": "k1"}) == 6
    assert running.metric("event_processor_auth_mode", {"mode": "enforce"}) == 1


async def test_monitor_publishes_everything_and_counts_what_enforce_would_reject(
    emulator: Emulator, world: World, secret: Secret, daemon: Any
) -> None:
    """A fleet half on signing: every valid event is published; the unsigned are counted."""
    secret.put(key_set_text({"k1": K1}))
    signed_ones = [signed(submission(device_id=DEVICE_A), device=DEVICE_A) for _ in range(3)]
    unsigned: list[Sent] = [(encode(submission(device_id=DEVICE_B)), {}) for _ in range(4)]
    await asyncio.to_thread(send, emulator, world.queue_url, signed_ones + unsigned)

    running = await daemon(
        settings_for(world, auth_mode="monitor", auth_keys_secret_id=secret.name), FAST_POLICY
    )
    await drained(emulator, world)
    await running.stop()

    published = await asyncio.to_thread(published_submissions, emulator, world)
    assert len(published) == 7
    assert await asyncio.to_thread(drain_queue, emulator, world.dlq_url) == []
    assert running.metric(AUTH_RESULTS, {"result": "ok"}) == 3
    assert running.metric(AUTH_RESULTS, {"result": "signature_missing"}) == 4


async def test_a_rotation_has_two_live_keys_and_counts_each(
    emulator: Emulator, world: World, secret: Secret, daemon: Any
) -> None:
    """Sensors on the old and the new key both publish; verified counts split by key id."""
    secret.put(key_set_text({"k1": K1, "k2": K2}))
    old = [signed(submission(device_id=DEVICE_A), device=DEVICE_A) for _ in range(3)]
    new = [
        signed(submission(device_id=DEVICE_B), device=DEVICE_B, key_id="k2", master=K2)
        for _ in range(2)
    ]
    await asyncio.to_thread(send, emulator, world.queue_url, old + new)

    running = await daemon(
        settings_for(world, auth_mode="enforce", auth_keys_secret_id=secret.name), FAST_POLICY
    )
    await drained(emulator, world)
    await running.stop()

    assert len(await asyncio.to_thread(published_submissions, emulator, world)) == 5
    verified = "event_processor_auth_verified_total"
    assert running.metric(verified, {"key_id": "k1"}) == 3
    assert running.metric(verified, {"key_id": "k2"}) == 2


async def test_an_unknown_key_makes_the_daemon_read_the_key_set_again(
    emulator: Emulator, world: World, secret: Secret, daemon: Any
) -> None:
    """A key added after start-up is found on the first message that names it, long before
    the periodic refresh; nothing of it is rejected."""
    secret.put(key_set_text({"k1": K1}))
    running = await daemon(
        settings_for(world, auth_mode="enforce", auth_keys_secret_id=secret.name), FAST_POLICY
    )
    await eventually(lambda: running.worker.ready)
    await asyncio.to_thread(secret.put, key_set_text({"k1": K1, "k2": K2}))
    message = signed(submission(device_id=DEVICE_A), device=DEVICE_A, key_id="k2", master=K2)
    await asyncio.to_thread(send, emulator, world.queue_url, [message])
    await drained(emulator, world)
    await running.stop()

    assert len(await asyncio.to_thread(published_submissions, emulator, world)) == 1
    assert running.metric(AUTH_RESULTS, {"result": "unknown_key"}) == 0
    assert running.metric("event_processor_auth_keyset_keys") == 2


async def test_a_revocation_takes_effect_at_the_next_refresh(
    emulator: Emulator, world: World, secret: Secret, daemon: Any
) -> None:
    """Revoked in the secret, a device's genuine signatures are refused once the periodic
    refresh has read it; another device goes on."""
    secret.put(key_set_text({"k1": K1}))
    settings = settings_for(
        world, auth_mode="enforce", auth_keys_secret_id=secret.name, auth_keys_refresh_seconds=1
    )
    running = await daemon(settings, FAST_POLICY)
    before = signed(submission(device_id=DEVICE_A), device=DEVICE_A)
    await asyncio.to_thread(send, emulator, world.queue_url, [before])
    await drained(emulator, world)

    await asyncio.to_thread(secret.put, key_set_text({"k1": K1}, revoked=(DEVICE_A,)))
    revoked = "event_processor_auth_keyset_revoked_devices"
    await eventually(lambda: running.metric(revoked) == 1, timeout_s=10)
    after = signed(submission(device_id=DEVICE_A), device=DEVICE_A)
    other = signed(submission(device_id=DEVICE_B), device=DEVICE_B)
    await asyncio.to_thread(send, emulator, world.queue_url, [after, other])
    await drained(emulator, world)
    await running.stop()

    published = await asyncio.to_thread(published_submissions, emulator, world)
    assert sorted(map(sorted, published.values())) == [[DEVICE_B], [DEVICE_A]]
    reasons = await asyncio.to_thread(dead_letter_reasons, emulator, world)
    assert reasons == {after[0]: "device_revoked"}


async def test_an_unreadable_key_set_at_start_up_holds_receiving_until_it_is_read(
    emulator: Emulator, world: World, secret: Secret, daemon: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No secret yet: alive, not ready, nothing received (the message waits in SQS); once
    the secret exists the daemon reads it, becomes ready and publishes."""
    caplog.set_level(logging.WARNING, logger="event_processor")
    message = signed(submission(device_id=DEVICE_A), device=DEVICE_A)
    await asyncio.to_thread(send, emulator, world.queue_url, [message])
    port = free_port()
    running = await daemon(
        settings_for(
            world, auth_mode="enforce", auth_keys_secret_id=secret.name, metrics_port=port
        ),
        FAST_POLICY,
    )
    await eventually(lambda: "keyset_unreadable" in actions(caplog))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 503
        assert not running.worker.running
        assert await asyncio.to_thread(queue_counts, emulator, world.queue_url) == (1, 0)
        assert running.metric("event_processor_messages_received_total") == 0

        await asyncio.to_thread(secret.put, key_set_text({"k1": K1}))
        await drained(emulator, world)
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200
    await running.stop()
    assert len(await asyncio.to_thread(published_submissions, emulator, world)) == 1
    assert actions(caplog).count("keyset_unreadable") == 1, "said once, not per attempt"


async def test_a_key_set_unreadable_at_refresh_keeps_the_last_good_one(
    emulator: Emulator, world: World, secret: Secret, daemon: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The secret gone after start-up: refreshes fail and say so once, the set in use ages,
    and signed submissions keep flowing on it."""
    caplog.set_level(logging.WARNING, logger="event_processor")
    secret.put(key_set_text({"k1": K1}))
    running = await daemon(
        settings_for(
            world, auth_mode="enforce", auth_keys_secret_id=secret.name, auth_keys_refresh_seconds=1
        ),
        FAST_POLICY,
    )
    await eventually(lambda: running.worker.ready)
    await asyncio.to_thread(secret.delete)
    failures = "event_processor_auth_keyset_refresh_failures_total"
    await eventually(lambda: running.metric(failures) >= 2, timeout_s=10)
    assert running.metric("event_processor_auth_keyset_age_seconds") > 1
    message = signed(submission(device_id=DEVICE_A), device=DEVICE_A)
    await asyncio.to_thread(send, emulator, world.queue_url, [message])
    await drained(emulator, world)
    await running.stop()
    assert len(await asyncio.to_thread(published_submissions, emulator, world)) == 1
    assert actions(caplog).count("keyset_refresh_failed") == 1


async def test_an_invalid_key_set_at_start_up_exits_2_without_quoting_it(
    world: World, secret: Secret, daemon: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A key too short is a settings error: exit 2, the log names the key id, not the key."""
    short = base64.b64encode(b"sixteen byte key").decode()
    secret.put(json.dumps({"keys": {"k1": short}}))
    caplog.set_level(logging.ERROR, logger="event_processor")
    running = await daemon(
        settings_for(world, auth_mode="enforce", auth_keys_secret_id=secret.name), FAST_POLICY
    )
    assert await asyncio.wait_for(running.task, timeout=30) == exitcodes.USAGE
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "startup_failed"]
    assert "key k1 is 16 bytes" in record.error  # type: ignore[attr-defined]
    assert short not in caplog.text


async def test_a_key_set_file_is_read_again_at_each_refresh(
    emulator: Emulator, world: World, daemon: Any, tmp_path: Path
) -> None:
    """AUTH_KEYS_FILE (a mounted Kubernetes Secret): a key added to the file is used once the
    refresh has read it."""
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(key_set_text({"k1": K1}))
    running = await daemon(
        settings_for(
            world, auth_mode="enforce", auth_keys_file=keys_file, auth_keys_refresh_seconds=1
        ),
        FAST_POLICY,
    )
    await eventually(lambda: running.worker.ready)
    # Replaced whole, as Kubernetes swaps a mounted Secret: a reader never sees half a file.
    staged = tmp_path / "keys.json.new"
    staged.write_text(key_set_text({"k1": K1, "k2": K2}))
    staged.replace(keys_file)
    await eventually(lambda: running.metric("event_processor_auth_keyset_keys") == 2, timeout_s=10)
    messages = [
        signed(submission(device_id=DEVICE_A), device=DEVICE_A),
        signed(submission(device_id=DEVICE_B), device=DEVICE_B, key_id="k2", master=K2),
    ]
    await asyncio.to_thread(send, emulator, world.queue_url, messages)
    await drained(emulator, world)
    await running.stop()
    assert len(await asyncio.to_thread(published_submissions, emulator, world)) == 2


async def test_two_devices_with_one_submission_id_get_distinct_ids_and_a_redelivery_keeps_them(
    emulator: Emulator, world: World, secret: Secret, daemon: Any
) -> None:
    """Same submission_id from A and B: disjoint event ids; A's body sent twice (a sensor's
    retry) yields the same ids twice, which a consumer's dedup absorbs."""
    secret.put(key_set_text({"k1": K1}))
    shared = str(uuid.uuid4())
    from_a = signed(submission(submission_id=shared, device_id=DEVICE_A), device=DEVICE_A)
    from_b = signed(submission(submission_id=shared, device_id=DEVICE_B), device=DEVICE_B)
    await asyncio.to_thread(send, emulator, world.queue_url, [from_a, from_b, from_a])
    running = await daemon(
        settings_for(world, auth_mode="enforce", auth_keys_secret_id=secret.name), FAST_POLICY
    )
    await drained(emulator, world)
    await running.stop()

    ids: dict[str, list[str]] = {DEVICE_A: [], DEVICE_B: []}
    for record in await asyncio.to_thread(stream_records, emulator, world):
        assert record["submission_id"] == shared
        ids[record["device_id"]].append(record["event_id"])
    assert len(ids[DEVICE_A]) == 6
    assert len(ids[DEVICE_B]) == 3
    assert len(set(ids[DEVICE_A])) == 3, "the second copy repeats the first one's ids"
    assert not set(ids[DEVICE_A]) & set(ids[DEVICE_B])


def actions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [str(getattr(r, "action", "")) for r in caplog.records]


async def test_the_tools_count_and_redrive_rejections_and_derive_enrolments(
    emulator: Emulator, world: World, secret: Secret, daemon: Any
) -> None:
    """dlq inspect counts the auth reasons; once the missing key is in the key set, a redrive
    of the unknown_key letters carries their signature back and they publish; keys derive
    reads the same secret and issues a key the daemon accepts."""
    secret.put(key_set_text({"k1": K1}))
    early = signed(submission(device_id=DEVICE_B), device=DEVICE_B, key_id="k2", master=K2)
    unsigned: Sent = (encode(submission(device_id=DEVICE_A)), {})
    await asyncio.to_thread(send, emulator, world.queue_url, [early, unsigned])
    settings = settings_for(world, auth_mode="enforce", auth_keys_secret_id=secret.name)
    running = await daemon(settings, FAST_POLICY)
    await drained(emulator, world)
    await running.stop()

    sqs = client(emulator, "sqs")
    report = await asyncio.to_thread(inspect.inspect_dlq, sqs, world.dlq_url)
    assert dict(report.counts) == {
        ("unknown_key", "submission"): 1,
        ("signature_missing", "submission"): 1,
    }

    await asyncio.to_thread(secret.put, key_set_text({"k1": K1, "k2": K2}))
    summary = await asyncio.to_thread(
        redrive.redrive,
        sqs,
        world.dlq_url,
        world.queue_url,
        reason="unknown_key",
        out=io.StringIO(),
    )
    assert (summary.moved, summary.failed) == (1, 0)

    out = io.StringIO()
    args = cli.build_parser().parse_args(
        ["keys", "derive", "--device-id", DEVICE_A, "--key-id", "k2",
         "--auth-keys-secret-id", secret.name, "--endpoint-url", world.endpoint_url,
         "--aws-region", world.region]
    )  # fmt: skip
    assert await asyncio.to_thread(args.handler, args, out) == exitcodes.OK
    device_id, key_id, device_key = read_enrolment(out.getvalue())
    enrolled_body = encode(submission(device_id=device_id))
    enrolled = (
        enrolled_body,
        signing.signature_attributes(device_key, key_id, device_id, enrolled_body),
    )
    await asyncio.to_thread(send, emulator, world.queue_url, [enrolled])

    running = await daemon(settings, FAST_POLICY)
    await drained(emulator, world)
    await running.stop()
    published = await asyncio.to_thread(published_submissions, emulator, world)
    assert sorted(map(sorted, published.values())) == [[DEVICE_B], [DEVICE_A]]
    assert running.metric("event_processor_auth_verified_total", {"key_id": "k2"}) == 2
