"""The sensor-signature envelope against the reference vectors written in the docs, and the
forms it refuses (pure logic)."""

from __future__ import annotations

import base64
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest

from event_processor.contract import signing
from event_processor.contract.signing import Envelope, parse_envelope

DOC = Path(__file__).resolve().parents[2] / "docs" / "authentication.md"
DEVICE = "93552c93-6e6f-48fe-bbf9-6ba6ac20c120"
GOOD = f"v1;d={DEVICE};k=k1;s=" + "A" * 43


def doc_vectors() -> list[dict[str, Any]]:
    """The JSON block between the doc's signing-vectors markers."""
    text = DOC.read_text()
    block = re.search(
        r"<!-- signing-vectors:begin -->\s*```json\n(.*?)```\s*<!-- signing-vectors:end -->",
        text,
        re.DOTALL,
    )
    assert block is not None, "docs/authentication.md lost its vectors block"
    vectors: list[dict[str, Any]] = json.loads(block.group(1))
    return vectors


VECTORS = doc_vectors()


def test_the_docs_hold_vectors_of_both_bodies_and_two_keys() -> None:
    """The vectors cover a base64 body, a non-ASCII plain body, and two key ids."""
    assert len(VECTORS) >= 4
    assert {v["key_id"] for v in VECTORS} == {"k1", "2026-12"}
    assert any(not v["body"].isascii() for v in VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['key_id']}:{v['body'][:8]}")
def test_derivation_and_signature_match_the_reference_vectors(vector: dict[str, Any]) -> None:
    """Device key and attribute value are exactly the independently computed ones."""
    master = base64.b64decode(vector["master_key_b64"])
    device_key = signing.derive_device_key(master, vector["device_id"])
    assert device_key.hex() == vector["device_key_hex"]
    value = signing.envelope_value(
        device_key, vector["key_id"], vector["device_id"], vector["body"]
    )
    assert value == vector["attribute_value"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['key_id']}:{v['body'][:8]}")
def test_a_reference_envelope_parses_and_matches_only_its_own_body(vector: dict[str, Any]) -> None:
    """The vector's value verifies against its body, and not against the body changed by one
    character or under the other key."""
    envelope = parse_envelope(vector["attribute_value"])
    assert envelope is not None
    assert (envelope.device_id, envelope.key_id) == (vector["device_id"], vector["key_id"])
    device_key = signing.MacKey(bytes.fromhex(vector["device_key_hex"]))
    assert signing.matches(envelope, device_key, vector["body"])
    assert not signing.matches(envelope, device_key, vector["body"] + " ")
    assert not signing.matches(envelope, signing.MacKey(bytes(32)), vector["body"])


def test_signature_attributes_are_one_string_attribute() -> None:
    """What a sensor passes as MessageAttributes."""
    attributes = signing.signature_attributes(bytes(32), "k1", DEVICE, "body")
    assert list(attributes) == ["sensor-signature"]
    assert attributes["sensor-signature"]["DataType"] == "String"
    assert parse_envelope(attributes["sensor-signature"]["StringValue"]) == Envelope(
        DEVICE, "k1", signing.signature(bytes(32), "k1", DEVICE, "body")
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        GOOD.replace("v1;", "v2;"),
        GOOD.replace("v1;", "V1;"),
        GOOD.upper().replace("V1;D=", "v1;d=").replace(";K=K1;S=", ";k=k1;s="),  # uppercase id
        GOOD.replace(DEVICE, DEVICE.replace("-", "")),  # not 8-4-4-4-12
        GOOD.replace(DEVICE, "{" + DEVICE + "}"),
        f"v1;k=k1;d={DEVICE};s=" + "A" * 43,  # fields out of order
        GOOD + ";x=1",  # a field too many
        GOOD + "=",  # padded
        GOOD[:-1],  # 42 characters
        GOOD[:-1] + "+",  # standard base64, not base64url
        GOOD.replace("k=k1", "k="),  # empty key id
        GOOD.replace("k=k1", "k=k;1"),
        GOOD.replace("k=k1", "k=" + "k" * 65),
        GOOD.replace("k=k1", "k=kÉ"),
        GOOD + "\n",  # a trailing newline is not the value
        " " + GOOD,
        GOOD.replace(";", ","),
    ],
)
def test_malformed_envelopes_are_refused(value: str) -> None:
    """Anything but exactly v1;d=<lowercase uuid>;k=<key id>;s=<43 base64url> is malformed."""
    assert parse_envelope(value) is None


def test_a_well_formed_envelope_with_the_longest_key_id_parses() -> None:
    """64 characters of the key id alphabet are a key id."""
    key_id = "A-z_0." * 10 + "abcd"
    assert len(key_id) == 64
    envelope = parse_envelope(GOOD.replace("k=k1", f"k={key_id}"))
    assert envelope is not None
    assert envelope.key_id == key_id


def test_a_body_with_a_lone_surrogate_signs_without_raising() -> None:
    """SQS refuses such a body, but a malformed string still gets a MAC, never an exception."""
    assert len(signing.signature(bytes(32), "k1", DEVICE, "a\ud800b")) == 43


@pytest.mark.parametrize("key_bytes", [0, 1, 32, 63, 64, 65, 200])
def test_mac_key_is_hmac_sha256_for_any_key_length(key_bytes: int) -> None:
    """The precomputed-state HMAC is the stdlib's HMAC-SHA256, keys longer than a block too."""
    key = bytes(range(key_bytes % 256)) * (key_bytes // 256 + 1)
    key = key[:key_bytes]
    for data in (b"", b"x", bytes(range(256)) * 9):
        assert signing.MacKey(key).mac(data) == hmac.digest(key, data, "sha256")
    assert repr(signing.MacKey(key)) == "MacKey(...)"
