"""The sensor-signature envelope (docs/authentication.md): the one owner of how a submission is
signed and how a signature is read, for the daemon, the operator tools and the sensors.

A sensor signs its SQS message body, exactly as sent, with a key derived from a master key and
its device id; the signature travels in a String message attribute, so the body is unchanged:
`v1;d=<device_id>;k=<key_id>;s=<unpadded base64url HMAC-SHA256>`.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
from typing import Final, NamedTuple

from event_processor.contract.rules import UUID_PATTERN

# The message attribute that carries the envelope.
SIGNATURE_ATTRIBUTE: Final = "sensor-signature"
VERSION: Final = "v1"
# A key id travels inside the envelope (`;`-separated) and names a metric label: a short token.
KEY_ID_PATTERN: Final = r"[A-Za-z0-9._-]{1,64}"
# A master key shorter than the HMAC's own output would weaken every key derived from it.
MIN_MASTER_KEY_BYTES: Final = 32
_DERIVATION_LABEL: Final = b"edr-sensor-v1|"
# SHA-256's block, and HMAC's inner and outer pads as byte translations (RFC 2104).
_BLOCK_BYTES: Final = 64
_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))
# Canonical lowercase UUID, key id, and 32 bytes as unpadded base64url (43 characters).
_ENVELOPE: Final = re.compile(
    r"v1;d=([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    rf";k=({KEY_ID_PATTERN});s=([A-Za-z0-9_-]{{43}})"
)
_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_KEY_ID: Final = re.compile(KEY_ID_PATTERN)
_DEVICE_ID: Final = re.compile(UUID_PATTERN)
# Longer than any well-formed envelope (5 + 36 + 3 + 64 + 3 + 43): not worth a regex scan.
_MAX_ENVELOPE_CHARS: Final = 160


class Envelope(NamedTuple):
    """A well-formed `sensor-signature` value, not yet verified (a tuple: one is made per
    message, and a frozen dataclass's __init__ costs several calls more)."""

    device_id: str
    key_id: str
    signature: str  # as sent: unpadded base64url


class MacKey:
    """An HMAC-SHA256 key with its inner and outer hash states computed once (RFC 2104): a MAC
    then costs two state copies and hashing the data, where `hmac.digest` sets HMAC up anew
    in OpenSSL each time, which costs as much as hashing a whole submission. The one HMAC of
    the envelope, for deriving and for signing; a key never leaves it (no repr)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK_BYTES:
            key = hashlib.sha256(key).digest()
        block = key.ljust(_BLOCK_BYTES, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def __repr__(self) -> str:
        return "MacKey(...)"

    def mac(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def derive_device_key(master_key: bytes | MacKey, device_id: str) -> bytes:
    """A device's key: HMAC-SHA256(master key, "edr-sensor-v1|" + device id).

    Derived, so the daemon needs no per-device table; a sensor holds only its own.
    """
    master = master_key if isinstance(master_key, MacKey) else MacKey(master_key)
    return master.mac(_DERIVATION_LABEL + device_id.encode())


def signature(device_key: bytes | MacKey, key_id: str, device_id: str, body: str) -> str:
    """The envelope's `s`: HMAC-SHA256 over "v1\n" key id "\n" device id "\n" body, base64url.

    `body` is the SQS MessageBody as sent, as UTF-8. SQS refuses lone surrogates in a body;
    `surrogatepass` only keeps a malformed string from raising (its MAC then never matches).
    """
    key = device_key if isinstance(device_key, MacKey) else MacKey(device_key)
    return _signature(key, key_id, device_id, body).decode()


def _signature(device_key: MacKey, key_id: str, device_id: str, body: str) -> bytes:
    signed = b"v1\n%b\n%b\n%b" % (
        key_id.encode(),
        device_id.encode(),
        body.encode("utf-8", "surrogatepass"),
    )
    # base64url without padding, in C calls only (base64.urlsafe_b64encode wraps these).
    mac = binascii.b2a_base64(device_key.mac(signed), newline=False)
    return mac.rstrip(b"=").translate(_URLSAFE)


def envelope_value(device_key: bytes, key_id: str, device_id: str, body: str) -> str:
    """The `sensor-signature` attribute's value for `body`, as a sensor sends it."""
    return f"{VERSION};d={device_id};k={key_id};s={signature(device_key, key_id, device_id, body)}"


def signature_attributes(
    device_key: bytes, key_id: str, device_id: str, body: str
) -> dict[str, dict[str, str]]:
    """SendMessage's MessageAttributes carrying the envelope for `body`."""
    value = envelope_value(device_key, key_id, device_id, body)
    return {SIGNATURE_ATTRIBUTE: {"DataType": "String", "StringValue": value}}


def is_key_id(text: str) -> bool:
    """Whether `text` can be a key id: what the envelope's `k` and the key set accept."""
    return _KEY_ID.fullmatch(text) is not None


def is_device_id(text: str) -> bool:
    """Whether `text` is a canonical 8-4-4-4-12 UUID, either case (the envelope's `d` is its
    lowercase form)."""
    return _DEVICE_ID.fullmatch(text) is not None


def parse_envelope(value: str) -> Envelope | None:
    """The envelope's fields, or None if `value` is not exactly the v1 form."""
    if len(value) > _MAX_ENVELOPE_CHARS:
        return None
    match = _ENVELOPE.fullmatch(value)
    if match is None:
        return None
    device_id, key_id, sent = match.groups()
    return Envelope(device_id, key_id, sent)


def matches(envelope: Envelope, device_key: MacKey, body: str) -> bool:
    """Whether the envelope's signature is `body`'s under `device_key`, compared in constant
    time. The expected value never leaves this function."""
    expected = _signature(device_key, envelope.key_id, envelope.device_id, body)
    return hmac.compare_digest(expected, envelope.signature.encode())
