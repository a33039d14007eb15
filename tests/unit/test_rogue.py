"""The demo's rogue device (pure logic): each forgery fails the daemon's check as it should,
and its verdict holds only when every submission was rejected and none published."""

from __future__ import annotations

import random

import pytest

from devworld.rogue import EXPECTED, Forgery, Rogue
from event_processor.auth.keyset import KeySet, device_mismatch
from event_processor.contract.parse import ParsedSubmission, parse_submission
from event_processor.contract.rules import Reason, Rejection
from event_processor.contract.signing import Envelope
from sensor_fleet.signer import FleetSigner

KEYS = KeySet({"k1": bytes(range(32))})
THIEF = "93552c93-6e6f-48fe-bbf9-6ba6ac20c120"
VICTIM = "6f3a0c1e-1b2d-4c3e-8f4a-5b6c7d8e9f00"


def rogue() -> Rogue:
    return Rogue(FleetSigner(KEYS).device(THIEF), VICTIM, random.Random(4))


def check(attributes: dict[str, dict[str, str]] | None, body: str) -> Reason | None:
    """What the daemon's enforce mode makes of one message: its reason, or None if published
    (KeySet.verify before the parse, then the device comparison, as the pipeline does)."""
    verdict = KEYS.verify(attributes or {}, body)
    if isinstance(verdict, Rejection):
        return verdict.reason
    parsed = parse_submission(body)
    assert isinstance(parsed, ParsedSubmission)
    assert isinstance(verdict, Envelope)
    if parsed.device_id != verdict.device_id:
        return device_mismatch(verdict, parsed.device_id).reason
    return None


def test_each_forgery_fails_as_expected() -> None:
    """Unsigned, forged and mismatched fail as signature_missing, signature_invalid and
    device_mismatch; every body is valid and claims the victim."""
    attempts = rogue().attempts()
    assert [a.forgery for a in attempts] == list(Forgery)
    for attempt in attempts:
        parsed = parse_submission(attempt.body)
        assert isinstance(parsed, ParsedSubmission)
        assert not parsed.rejected
        assert parsed.device_id == VICTIM
        assert check(attempt.attributes, attempt.body) is EXPECTED[attempt.forgery]
    assert {EXPECTED[f] for f in Forgery} == {
        Reason.SIGNATURE_MISSING,
        Reason.SIGNATURE_INVALID,
        Reason.DEVICE_MISMATCH,
    }


def test_the_thief_cannot_be_its_own_victim() -> None:
    """A victim equal to the thief would make the forged signature genuine: refused."""
    with pytest.raises(ValueError, match="another device"):
        Rogue(FleetSigner(KEYS).device(THIEF), THIEF, random.Random(1))


def test_verdict_needs_every_rejection_and_nothing_in_the_stream() -> None:
    """Only what SQS accepted counts; a reason short of it, or a record in the stream, fails."""
    r = rogue()
    first, second = r.attempts(), r.attempts()
    r.record(first, {a.body for a in first})
    r.record(second, {a.body for a in second if a.forgery is not Forgery.UNSIGNED})
    assert {f: len(ids) for f, ids in r.sent.items()} == {
        Forgery.UNSIGNED: 1,
        Forgery.FORGED: 2,
        Forgery.MISMATCHED: 2,
    }
    rejected = {"signature_missing": 1.0, "signature_invalid": 2.0, "device_mismatch": 2.0}
    passing = r.verdict(rejected, ["someone-else"])
    assert passing.ok
    assert passing.lines()[-1] == (
        "rogue: 5 submissions, every one rejected; its records in the stream: 0"
    )
    assert not r.verdict({**rejected, "device_mismatch": 1.0}, []).ok
    leaked = r.verdict(rejected, [first[1].submission_id, "someone-else"])
    assert not leaked.ok
    assert leaked.in_stream == 1
    assert not Rogue(FleetSigner(KEYS).device(THIEF), VICTIM, random.Random(1)).verdict({}, []).ok
