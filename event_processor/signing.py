"""The sensor-signature envelope (docs/authentication.md): the one owner of how a submission is
signed and how a signature is read, for the daemon, the operator tools and the sensors.

A sensor signs its SQS message body, exactly as sent, with a key derived from a master key and
its device id; the signature travels in a String message attribute, so the body is unchanged:
`v1;d=<device_id>;k=<key_id>;s=<unpadded base64url HMAC-SHA256>`.
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass
from typing import Final

# The message attribute that carries the envelope.
SIGNATURE_ATTRIBUTE: Final = "sensor-signature"
VERSION: Final = "v1"
# A key id travels inside the envelope (`;`-separated) and names a metric label: a short token.
KEY_ID_PATTERN: Final = r"[A-Za-z0-9._-]{1,64}"
# A master key shorter than the HMAC's own output would weaken every key derived from it.
MIN_MASTER_KEY_BYTES: Final = 32
_DERIVATION_LABEL: Final = b"edr-sensor-v1|"
_DIGEST: Final = "sha256"
# Canonical lowercase UUID, key id, and 32 bytes as unpadded base64url (43 characters).
_ENVELOPE: Final = re.compile(
    r"v1;d=([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    rf";k=({KEY_ID_PATTERN});s=([A-Za-z0-9_-]{{43}})"
)
# Longer than any well-formed envelope (5 + 36 + 3 + 64 + 3 + 43): not worth a regex scan.
_MAX_ENVELOPE_CHARS: Final = 160


@dataclass(frozen=True, slots=True)
class Envelope:
    """A well-formed `sensor-signature` value, not yet verified."""

    device_id: str
    key_id: str
    signature: str  # as sent: unpadded base64url


def derive_device_key(master_key: bytes, device_id: str) -> bytes:
    """A device's key: HMAC-SHA256(master key, "edr-sensor-v1|" + device id).

    Derived, so the daemon needs no per-device table; a sensor holds only its own.
    """
    return hmac.digest(master_key, _DERIVATION_LABEL + device_id.encode(), _DIGEST)


def signature(device_key: bytes, key_id: str, device_id: str, body: str) -> str:
    """The envelope's `s`: HMAC-SHA256 over "v1\\n" key id "\\n" device id "\\n" body, base64url.

    `body` is the SQS MessageBody as sent, as UTF-8. SQS refuses lone surrogates in a body;
    `surrogatepass` only keeps a malformed string from raising (its MAC then never matches).
    """
    signed = b"v1\n%b\n%b\n%b" % (
        key_id.encode(),
        device_id.encode(),
        body.encode("utf-8", "surrogatepass"),
    )
    mac = hmac.digest(device_key, signed, _DIGEST)
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def envelope_value(device_key: bytes, key_id: str, device_id: str, body: str) -> str:
    """The `sensor-signature` attribute's value for `body`, as a sensor sends it."""
    return f"{VERSION};d={device_id};k={key_id};s={signature(device_key, key_id, device_id, body)}"


def signature_attributes(
    device_key: bytes, key_id: str, device_id: str, body: str
) -> dict[str, dict[str, str]]:
    """SendMessage's MessageAttributes carrying the envelope for `body`."""
    value = envelope_value(device_key, key_id, device_id, body)
    return {SIGNATURE_ATTRIBUTE: {"DataType": "String", "StringValue": value}}


def parse_envelope(value: str) -> Envelope | None:
    """The envelope's fields, or None if `value` is not exactly the v1 form."""
    if len(value) > _MAX_ENVELOPE_CHARS:
        return None
    match = _ENVELOPE.fullmatch(value)
    if match is None:
        return None
    device_id, key_id, sent = match.groups()
    return Envelope(device_id, key_id, sent)


def matches(envelope: Envelope, device_key: bytes, body: str) -> bool:
    """Whether the envelope's signature is `body`'s under `device_key`, compared in constant
    time. The expected value never leaves this function."""
    expected = signature(device_key, envelope.key_id, envelope.device_id, body)
    return hmac.compare_digest(expected.encode(), envelope.signature.encode())
