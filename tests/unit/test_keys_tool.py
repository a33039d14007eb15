"""`keys new` and `keys derive`'s logic: what a new key and an enrolment hold (pure logic; the
command against the emulator's Secrets Manager is in tests/integration/test_auth.py)."""

from __future__ import annotations

import argparse
import base64
import io
import json
from datetime import UTC, datetime

import pytest

from event_processor import exitcodes
from event_processor.auth.keyset import KeySet
from event_processor.contract import signing
from event_processor.tools import keys
from event_processor.tools.aws import UsageError

DEVICE = "93552c93-6e6f-48fe-bbf9-6ba6ac20c120"
K1 = KeySet({"k1": bytes(range(32))})


def test_a_new_entry_is_a_fresh_32_byte_key_under_a_valid_id() -> None:
    """Two entries never share a key; the default id is dated and valid in an envelope."""
    key_id = keys.new_key_id(datetime(2026, 12, 3, tzinfo=UTC))
    assert key_id.startswith("2026-12-03-")
    first, second = keys.new_entry(key_id), keys.new_entry(key_id)
    assert len(base64.b64decode(first[key_id])) == 32
    assert first != second
    assert KeySet.parse(json.dumps({"keys": first})).keys[key_id] == base64.b64decode(first[key_id])


def test_keys_new_prints_an_entry_or_a_whole_key_set() -> None:
    """The entry merges into "keys"; --key-set prints a key set the daemon parses."""
    out = io.StringIO()
    args = argparse.Namespace(key_id="k7", key_set=True)
    assert keys.new_command(args, out) == exitcodes.OK
    assert list(KeySet.parse(out.getvalue()).keys) == ["k7"]


def test_an_enrolment_is_the_device_key_the_daemon_derives() -> None:
    """device_key is HMAC(master, label + device), base64; the id is lower-cased."""
    issued = keys.enrolment(K1, DEVICE.upper(), None)
    assert issued["device_id"] == DEVICE
    assert issued["key_id"] == "k1"
    assert base64.b64decode(issued["device_key"]) == signing.derive_device_key(
        bytes(range(32)), DEVICE
    )
    assert keys.read_enrolment(json.dumps(issued)) == (
        DEVICE,
        "k1",
        signing.derive_device_key(bytes(range(32)), DEVICE),
    )


@pytest.mark.parametrize(
    ("key_set", "device_id", "key_id", "words"),
    [
        (K1, "not-a-uuid", None, "canonical"),
        (KeySet({"k1": bytes(32), "k2": bytes(32)}), DEVICE, None, "pass --key-id"),
        (K1, DEVICE, "k9", "not in the key set"),
        (KeySet({"k1": bytes(32)}, frozenset({DEVICE})), DEVICE, None, "revoked"),
    ],
)
def test_an_enrolment_is_refused_when_it_would_be_wrong(
    key_set: KeySet, device_id: str, key_id: str | None, words: str
) -> None:
    """A malformed device, an ambiguous or unknown key, a revoked device: usage errors."""
    with pytest.raises(UsageError, match=words):
        keys.enrolment(key_set, device_id, key_id)


def test_a_broken_enrolment_is_refused_without_quoting_it() -> None:
    """A device key that is not base64 is named, not shown."""
    text = json.dumps({"device_id": DEVICE, "key_id": "k1", "device_key": "sekrit!!"})
    with pytest.raises(ValueError, match="not an enrolment") as raised:
        keys.read_enrolment(text)
    assert "sekrit" not in str(raised.value)
