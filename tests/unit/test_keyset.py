"""The key set: what parses, what is refused (and that no refusal quotes a key), and every
reason a message's envelope is refused for (pure logic)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from event_processor.auth.keyset import KeySet, KeySetError, device_mismatch
from event_processor.contract import signing
from event_processor.contract.rules import Reason, Rejection
from event_processor.contract.signing import Envelope

MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(100, 132))
SECRET_TEXT = base64.b64encode(MASTER).decode()
DEVICE = "93552c93-6e6f-48fe-bbf9-6ba6ac20c120"
OTHER_DEVICE = "0f0e0d0c-0b0a-4908-8706-050403020100"
BODY = "eyJrIjogMX0="


def key_set(**keys: bytes) -> KeySet:
    return KeySet(keys)


def signed(
    body: str = BODY, *, device: str = DEVICE, key_id: str = "k1", master: bytes = MASTER
) -> dict[str, Any]:
    """The MessageAttributes of a message signed by `device` under `master` named `key_id`."""
    device_key = signing.derive_device_key(master, device)
    return signing.signature_attributes(device_key, key_id, device, body)


def test_a_key_set_parses_with_several_keys_and_revoked_devices() -> None:
    """Keys by id (decoded), revoked devices lower-cased."""
    text = json.dumps(
        {
            "keys": {"k1": SECRET_TEXT, "2026-12": base64.b64encode(OTHER_MASTER).decode()},
            "revoked_devices": [DEVICE.upper()],
        }
    )
    keys = KeySet.parse(text)
    assert keys.keys == {"k1": MASTER, "2026-12": OTHER_MASTER}
    assert keys.revoked_devices == {DEVICE}
    assert SECRET_TEXT not in repr(keys)
    assert "k1" in repr(keys)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not json " + SECRET_TEXT, "not JSON (line 1"),
        (json.dumps([SECRET_TEXT]), "must be a JSON object"),
        (json.dumps({"keys": {}}), "at least one key id"),
        (json.dumps({"revoked_devices": []}), "at least one key id"),
        (json.dumps({"keys": {"k1": SECRET_TEXT}, SECRET_TEXT: 1}), "fields other than"),
        (json.dumps({"keys": {SECRET_TEXT + "/": SECRET_TEXT}}), "key id #1 is not"),
        (json.dumps({"keys": {"k1": 7}}), "key k1 is not a base64 string"),
        (json.dumps({"keys": {"k1": SECRET_TEXT + "!"}}), "key k1 is not base64"),
        (json.dumps({"keys": {"k1": SECRET_TEXT[:20] + "=="}}), "key k1 is 15 bytes"),
        (json.dumps({"keys": {"k1": SECRET_TEXT}, "revoked_devices": "x"}), "must be an array"),
        (
            json.dumps({"keys": {"k1": SECRET_TEXT}, "revoked_devices": [SECRET_TEXT]}),
            "revoked_devices[0]",
        ),
        ("x" * (64 * 1024 + 1), "over 64 KiB"),
    ],
)
def test_an_invalid_key_set_is_refused_without_quoting_a_key(text: str, words: str) -> None:
    """Each problem is named by key id or position; the key material never is."""
    with pytest.raises(KeySetError) as raised:
        KeySet.parse(text)
    message = str(raised.value)
    assert words in message
    assert SECRET_TEXT not in message
    assert SECRET_TEXT[:12] not in message


def test_a_valid_signature_gives_its_envelope() -> None:
    """Signed by the device the envelope names, with a key in the set."""
    verdict = key_set(k1=MASTER).verify(signed(), BODY)
    assert isinstance(verdict, Envelope)
    assert (verdict.device_id, verdict.key_id) == (DEVICE, "k1")


def test_a_custom_string_type_is_still_a_string_attribute() -> None:
    """SQS's String.<label> data types carry a string as well."""
    attributes = signed()
    attributes["sensor-signature"]["DataType"] = "String.sig"
    assert isinstance(key_set(k1=MASTER).verify(attributes, BODY), Envelope)


def reason_of(verdict: Envelope | Rejection) -> Reason:
    assert isinstance(verdict, Rejection)
    assert verdict.field == "sensor-signature"
    return verdict.reason


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({}, Reason.SIGNATURE_MISSING),
        ({"other": {"DataType": "String", "StringValue": "x"}}, Reason.SIGNATURE_MISSING),
        (
            {"sensor-signature": {"DataType": "String", "StringValue": "v1;nope"}},
            Reason.SIGNATURE_MALFORMED,
        ),
        (
            {"sensor-signature": {"DataType": "Binary", "BinaryValue": b"v1"}},
            Reason.SIGNATURE_MALFORMED,
        ),
        (
            {"sensor-signature": {"DataType": "Number", "StringValue": "1"}},
            Reason.SIGNATURE_MALFORMED,
        ),
        ({"sensor-signature": {"StringValue": "v1"}}, Reason.SIGNATURE_MALFORMED),
        (signed(key_id="k9"), Reason.UNKNOWN_KEY),
        (signed(master=OTHER_MASTER), Reason.SIGNATURE_INVALID),
        (signed(body=BODY + "x"), Reason.SIGNATURE_INVALID),
    ],
    ids=[
        "none",
        "other-only",
        "malformed",
        "binary",
        "number",
        "no-type",
        "unknown-key",
        "wrong-key",
        "other-body",
    ],
)
def test_each_failed_check_has_its_reason(attributes: dict[str, Any], reason: Reason) -> None:
    """Missing, malformed, unknown key, invalid: in that order of cost."""
    assert reason_of(key_set(k1=MASTER).verify(attributes, BODY)) is reason


def test_a_device_key_used_for_another_device_is_an_invalid_signature() -> None:
    """A stolen key of device A, used to sign as device B, does not verify as B."""
    stolen = signing.derive_device_key(MASTER, DEVICE)
    attributes = signing.signature_attributes(stolen, "k1", OTHER_DEVICE, BODY)
    assert reason_of(key_set(k1=MASTER).verify(attributes, BODY)) is Reason.SIGNATURE_INVALID


def test_a_revoked_device_is_refused_only_with_a_genuine_signature() -> None:
    """device_revoked means a valid signature of a revoked device; a forgery stays invalid."""
    keys = KeySet({"k1": MASTER}, frozenset({DEVICE}))
    verdict = keys.verify(signed(), BODY)
    assert reason_of(verdict) is Reason.DEVICE_REVOKED
    assert isinstance(verdict, Rejection)
    assert DEVICE in verdict.detail
    assert reason_of(keys.verify(signed(master=OTHER_MASTER), BODY)) is Reason.SIGNATURE_INVALID


def test_no_rejection_holds_a_key_or_the_expected_signature() -> None:
    """The details name ids only: never the master key, the device key or the expected MAC."""
    device_key = signing.derive_device_key(MASTER, DEVICE)
    expected = signing.signature(device_key, "k1", DEVICE, BODY)
    secrets = [
        MASTER.hex(),
        SECRET_TEXT,
        device_key.hex(),
        base64.b64encode(device_key).decode(),
        expected,
    ]
    keys = KeySet({"k1": MASTER}, frozenset({DEVICE}))
    for attributes in (signed(), signed(body="other"), signed(key_id="k9"), {}):
        verdict = keys.verify(attributes, BODY)
        assert isinstance(verdict, Rejection)
        assert not any(secret in verdict.detail for secret in secrets)


def test_device_mismatch_names_both_devices() -> None:
    """The body's device and the signer's, as ids."""
    envelope = Envelope(DEVICE, "k1", "A" * 43)
    rejection = device_mismatch(envelope, OTHER_DEVICE)
    assert rejection.reason is Reason.DEVICE_MISMATCH
    assert DEVICE in rejection.detail
    assert OTHER_DEVICE in rejection.detail


def test_device_key_is_the_documented_derivation() -> None:
    """What `keys derive` issues is what the daemon derives to check."""
    assert key_set(k1=MASTER).device_key("k1", DEVICE) == signing.derive_device_key(MASTER, DEVICE)
