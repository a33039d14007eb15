"""`dlq redrive --dry-run`: it reads the whole DLQ, changes nothing, and checks each letter
that would move against the current contract and signatures, as the daemon would."""

from __future__ import annotations

import io
import json
from typing import Any

from devworld.emulator import Emulator, World
from event_processor.auth.keyset import KeySet
from event_processor.contract.letters import submission_letter
from event_processor.contract.rules import Reason, Rejection
from event_processor.contract.signing import SIGNATURE_ATTRIBUTE, signature_attributes
from event_processor.pipeline.submission import source_message
from event_processor.tools import (
    recheck,
    redrive,
    redrive_report,
)
from event_processor.tools.text import counts
from tests.factories import encode, submission
from tests.helpers import client, queue_depth
from tests.integration.support import (
    ARRAYS,
    BAD_EVENTS,
    GARBAGE,
    HUNDREDS,
    POISON,
    all_visible,
    junk_dlq,
    letters_for,
    message_for,
    mixed_dlq,
    put_letters,
    rejected_by_reason,
)
from tests.integration.test_auth import DEVICE_A, DEVICE_B, K1, K2, key_set_text


def test_dry_run_sees_the_whole_dlq(emulator: Emulator, world: World) -> None:
    """A dry-run redrive lists every one of hundreds of letters; --max N says it is a sample."""
    ids = junk_dlq(emulator, world)
    sqs = client(emulator, "sqs")
    out = io.StringIO()

    summary = redrive.redrive(
        sqs, world.dlq_url, world.queue_url, dry_run=True, verbose=True, out=out
    )

    assert (summary.moved, summary.skipped, summary.failed) == (HUNDREDS, 0, 0)
    assert summary.read == HUNDREDS
    assert [line.split()[2] for line in out.getvalue().splitlines()] == ids
    assert "NOTE" not in redrive_report.text(summary)
    all_visible(emulator, world.dlq_url, HUNDREDS)
    assert queue_depth(emulator, world.queue_url) == 0

    limited = redrive.redrive(
        sqs, world.dlq_url, world.queue_url, dry_run=True, max_messages=30, out=io.StringIO()
    )
    assert (limited.moved, limited.limited) == (30, True)
    assert f"a SAMPLE: the dry run stopped at --max 30 after reading 30 of ~{HUNDREDS}" in (
        redrive_report.text(limited)
    )
    all_visible(emulator, world.dlq_url, HUNDREDS)


def test_dry_run_changes_nothing(emulator: Emulator, world: World) -> None:
    """A dry run lists what would move and leaves both queues as they were, all visible."""
    ids = mixed_dlq(emulator, world)
    out = io.StringIO()

    summary = redrive.redrive(
        client(emulator, "sqs"),
        world.dlq_url,
        world.queue_url,
        reason="not_an_object",
        dry_run=True,
        verbose=True,
        out=out,
    )

    assert (summary.moved, summary.skipped, summary.failed) == (2, 6, 0)
    assert redrive_report.text(summary).startswith(
        "dry run, nothing changed: would move 2, skipped 6"
    )
    listed = [line.split()[2] for line in out.getvalue().splitlines()]
    assert sorted(listed) == sorted(ids["not_an_object"])
    all_visible(emulator, world.dlq_url, 8)
    assert queue_depth(emulator, world.queue_url) == 0


FIXED = encode(submission())  # dead-lettered as invalid_body by an older contract; valid now


def old_rejection(body: str) -> Any:
    """`body` dead-lettered as invalid_body, as an older contract would have."""
    rejection = Rejection(Reason.INVALID_BODY, None, "an older contract's rejection")
    return submission_letter(source_message(message_for(body)), body, rejection)


def test_dry_run_checks_each_letter_against_the_contract(emulator: Emulator, world: World) -> None:
    """The dry run says which letters would publish and which would be rejected again, by
    reason, with rejected events counted, and shows bodies decoded; nothing changes."""
    sqs = client(emulator, "sqs")
    put_letters(sqs, world.dlq_url, [x for b in [*GARBAGE, *ARRAYS] for x in letters_for(b)])
    put_letters(sqs, world.dlq_url, [old_rejection(FIXED)])
    sqs.send_message(QueueUrl=world.dlq_url, MessageBody=BAD_EVENTS)  # SQS's redrive policy
    out = io.StringIO()

    summary = redrive.redrive(sqs, world.dlq_url, world.queue_url, dry_run=True, out=out)

    assert out.getvalue() == "", "no line per letter without --verbose"
    assert summary.verdicts == {
        recheck.PUBLISH: 2,
        "invalid_body": len(GARBAGE),
        "not_an_object": len(ARRAYS),
    }
    events = rejected_by_reason(BAD_EVENTS)
    assert summary.events_rejected == events
    text = redrive_report.text(summary)
    assert (
        "checked against the current contract (signatures not checked: AUTH_MODE=off): would"
        f" publish 2 (with {events.total()} rejected events: {counts(events)})"
        ", would be rejected again 5 (invalid_body: 3, not_an_object: 2)"
    ) in text, text
    assert "examples (would be rejected again: invalid_body):" in text
    assert "body is neither base64-encoded JSON nor JSON" in text
    assert '(base64-decoded) {"submission_id": ' in text, "previews are decoded"
    assert FIXED[:40] not in text, "not the raw base64"
    doc = redrive_report.as_json(summary)["check"]
    assert (doc["would_publish"], doc["would_be_rejected_again"]) == (2, 5)
    all_visible(emulator, world.dlq_url, 7)
    assert queue_depth(emulator, world.queue_url) == 0


def signed_letter(doc: dict[str, Any], *, device: str, key_id: str, master: bytes) -> Any:
    """`doc` signed by `device`, dead-lettered as unknown_key (its key was not in the set)."""
    body = encode(doc)
    device_key = KeySet.parse(key_set_text({key_id: master})).device_key(key_id, device)
    attributes = signature_attributes(device_key, key_id, device, body)
    rejection = Rejection(Reason.UNKNOWN_KEY, SIGNATURE_ATTRIBUTE, "not in the key set")
    return submission_letter(
        source_message(message_for(body, attributes)), body, rejection
    ), attributes


def test_dry_run_checks_signatures_as_the_daemon_would(emulator: Emulator, world: World) -> None:
    """With a key set, the dry run verifies each letter's signature as the daemon does (enforce:
    rejected again; monitor: published) and never prints a key or a signature."""
    sqs = client(emulator, "sqs")
    good, good_attributes = signed_letter(
        submission(device_id=DEVICE_A), device=DEVICE_A, key_id="k1", master=K1
    )
    unknown, unknown_attributes = signed_letter(
        submission(device_id=DEVICE_A), device=DEVICE_A, key_id="k2", master=K2
    )
    swapped, _ = signed_letter(
        submission(device_id=DEVICE_B), device=DEVICE_A, key_id="k1", master=K1
    )
    put_letters(sqs, world.dlq_url, [good, unknown, swapped])
    sqs.send_message(QueueUrl=world.dlq_url, MessageBody=POISON)  # unsigned
    keys = KeySet.parse(key_set_text({"k1": K1}))

    enforced = redrive.redrive(
        sqs,
        world.dlq_url,
        world.queue_url,
        dry_run=True,
        verbose=True,
        out=io.StringIO(),
        check=recheck.ContractCheck(keys),
    )
    monitored = redrive.redrive(
        sqs,
        world.dlq_url,
        world.queue_url,
        dry_run=True,
        check=recheck.ContractCheck(keys, enforce=False),
    )

    assert enforced.verdicts == {
        recheck.PUBLISH: 1,
        "unknown_key": 1,
        "device_mismatch": 1,
        "signature_missing": 1,
    }
    assert monitored.verdicts == {recheck.PUBLISH: 4}
    text = redrive_report.text(enforced) + json.dumps(redrive_report.as_json(enforced))
    assert "signatures checked (enforce) against key ids k1" in text
    for attributes in (good_attributes, unknown_attributes):
        value = attributes[SIGNATURE_ATTRIBUTE]["StringValue"]
        assert value.rsplit("s=", 1)[1] not in text, "no MAC shown"
    for key in (K1, K2):
        assert key_set_text({"k": key}).split('"')[5] not in text, "no key shown"
    all_visible(emulator, world.dlq_url, 4)
