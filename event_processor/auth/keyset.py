"""The key set: the sensors' master keys by id and the revoked devices (docs/authentication.md).

`{"keys": {"<key_id>": "<base64 master key>"}, "revoked_devices": ["<device_id>"]}`, read from
AWS Secrets Manager or a file. This module parses it and checks a submission's envelope
against it; no error, log line or repr made here ever holds a key or an expected MAC.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from event_processor import constants
from event_processor.contract import signing
from event_processor.contract.rules import Reason, Rejection
from event_processor.contract.signing import SIGNATURE_ATTRIBUTE, Envelope

if TYPE_CHECKING:
    from types_aiobotocore_secretsmanager import SecretsManagerClient

# Secrets Manager holds at most 64 KiB in a secret; a file is held to the same, so that a
# wrong path (a log, a disk image) is refused rather than read whole.
MAX_KEY_SET_BYTES: Final = 64 * 1024
_FIELDS: Final = frozenset({"keys", "revoked_devices"})
_MISSING: Final = Rejection(
    Reason.SIGNATURE_MISSING, SIGNATURE_ATTRIBUTE, f"no {SIGNATURE_ATTRIBUTE} message attribute"
)
_MALFORMED: Final = Rejection(
    Reason.SIGNATURE_MALFORMED,
    SIGNATURE_ATTRIBUTE,
    f"{SIGNATURE_ATTRIBUTE} is not a String attribute of the form"
    " v1;d=<lowercase uuid>;k=<key id>;s=<unpadded base64url HMAC-SHA256>",
)


class KeySetError(Exception):
    """The text read is not a valid key set. The message says what is wrong and where, by key
    id or position, never with a value."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """Master keys by id (any number live at once: that is how a rotation works) and the
    devices whose signatures are refused even when valid."""

    keys: Mapping[str, bytes] = field(repr=False)
    revoked_devices: frozenset[str] = frozenset()
    # Master keys ready to derive with, and device keys ready to verify with, by (key id,
    # device id): a message costs one HMAC, not two and their set-ups. Bounded (emptied when
    # full); a new key set starts empty.
    _masters: dict[str, signing.MacKey] = field(default_factory=dict, repr=False, compare=False)
    _device_keys: dict[tuple[str, str], signing.MacKey] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __repr__(self) -> str:
        return f"KeySet(key_ids={sorted(self.keys)}, revoked_devices={len(self.revoked_devices)})"

    @classmethod
    def parse(cls, text: str | bytes) -> KeySet:
        """The key set in `text`, or KeySetError naming what is wrong."""
        if len(text) > MAX_KEY_SET_BYTES:
            raise KeySetError(f"the key set is over {MAX_KEY_SET_BYTES // 1024} KiB")
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            # Position only: the decoder's message could quote the text around it.
            raise KeySetError(
                f"the key set is not JSON (line {exc.lineno}, column {exc.colno})"
            ) from None
        if not isinstance(doc, dict):
            raise KeySetError('the key set must be a JSON object {"keys": {...}}')
        if not _FIELDS.issuperset(doc):
            # Not named: a field that should not be there may be a key pasted in the wrong place.
            raise KeySetError("the key set has fields other than keys and revoked_devices")
        return cls(_keys(doc.get("keys")), _revoked(doc.get("revoked_devices", [])))

    def device_key(self, key_id: str, device_id: str) -> bytes:
        """The key a device is issued at enrolment (KeyError if the key id is not here)."""
        master = self._masters.get(key_id)
        if master is None:
            master = self._masters[key_id] = signing.MacKey(self.keys[key_id])
        return signing.derive_device_key(master, device_id)

    def _verifier(self, key_id: str, device_id: str) -> signing.MacKey:
        """The device's key, ready to check its signatures (cached)."""
        cached = self._device_keys.get((key_id, device_id))
        if cached is not None:
            return cached
        if len(self._device_keys) >= constants.AUTH_DEVICE_KEY_CACHE_ENTRIES:
            self._device_keys.clear()
        verifier = self._device_keys[key_id, device_id] = signing.MacKey(
            self.device_key(key_id, device_id)
        )
        return verifier

    def verify(self, attributes: Mapping[str, Any], body: str) -> Envelope | Rejection:
        """The envelope of a message whose signature holds, or why it does not.

        Checked in this order, each costing no more than the one before: the attribute, its
        form, the key id, the signature (an HMAC over the body, and one to derive the device
        key unless it is cached), and revocation last, so that `device_revoked` means a
        genuine signature.
        """
        attribute = attributes.get(SIGNATURE_ATTRIBUTE)
        if attribute is None:
            return _MISSING
        value = attribute.get("StringValue")
        # "String" or a custom "String.<label>": SQS's String type either way.
        if not isinstance(value, str) or attribute.get("DataType", "").split(".")[0] != "String":
            return _MALFORMED
        envelope = signing.parse_envelope(value)
        if envelope is None:
            return _MALFORMED
        if envelope.key_id not in self.keys:
            return Rejection(
                Reason.UNKNOWN_KEY,
                SIGNATURE_ATTRIBUTE,
                f"key id {envelope.key_id} is not in the key set",
            )
        if not signing.matches(envelope, self._verifier(envelope.key_id, envelope.device_id), body):
            return Rejection(
                Reason.SIGNATURE_INVALID,
                SIGNATURE_ATTRIBUTE,
                f"the signature does not match the body for device {envelope.device_id}"
                f" and key id {envelope.key_id}",
            )
        if envelope.device_id in self.revoked_devices:
            return Rejection(
                Reason.DEVICE_REVOKED,
                SIGNATURE_ATTRIBUTE,
                f"device {envelope.device_id} is revoked",
            )
        return envelope


def device_mismatch(envelope: Envelope, device_id: str) -> Rejection:
    """The body names another device than the one that signed it."""
    return Rejection(
        Reason.DEVICE_MISMATCH,
        "device_id",
        f"the body's device_id {device_id} is not the signer's {envelope.device_id}",
    )


def _keys(value: Any) -> dict[str, bytes]:
    if not isinstance(value, dict) or not value:
        raise KeySetError('the key set needs "keys": an object of at least one key id')
    keys: dict[str, bytes] = {}
    for position, (key_id, encoded) in enumerate(value.items(), start=1):
        if not signing.is_key_id(key_id):
            raise KeySetError(f"key id #{position} is not 1-64 characters of A-Z a-z 0-9 . _ -")
        if not isinstance(encoded, str):
            raise KeySetError(f"key {key_id} is not a base64 string")
        try:
            master = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise KeySetError(f"key {key_id} is not base64") from None
        if len(master) < signing.MIN_MASTER_KEY_BYTES:
            raise KeySetError(
                f"key {key_id} is {len(master)} bytes; a master key needs at least"
                f" {signing.MIN_MASTER_KEY_BYTES}"
            )
        keys[key_id] = master
    return keys


def _revoked(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise KeySetError("revoked_devices must be an array of device ids")
    for position, device_id in enumerate(value):
        if not isinstance(device_id, str) or not signing.is_device_id(device_id):
            raise KeySetError(f"revoked_devices[{position}] is not a UUID")
    return frozenset(device_id.lower() for device_id in value)


# --- where a key set is read from -----------------------------------------------------------


class KeySource(Protocol):
    """Where the daemon reads its key set; `read` raises OSError, botocore's errors or
    KeySetError."""

    @property
    def name(self) -> str:
        """For logs: which secret or file, never its content."""
        ...

    async def read(self) -> KeySet: ...


class FileKeySource:
    """A file, e.g. a Kubernetes Secret mounted into the pod (read again at every refresh,
    so an updated Secret is picked up without a restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def name(self) -> str:
        return f"file {self.path}"

    async def read(self) -> KeySet:
        return KeySet.parse(await asyncio.to_thread(read_file, self.path))


def read_file(path: Path) -> bytes:
    """A key set file's bytes, refusing one larger than any key set (OSError if unreadable)."""
    with path.open("rb") as file:
        return file.read(MAX_KEY_SET_BYTES + 1)


class SecretsManagerKeySource:
    """The SecretString of a Secrets Manager secret (its current version)."""

    def __init__(self, client: SecretsManagerClient, secret_id: str) -> None:
        self._client = client
        self.secret_id = secret_id

    @property
    def name(self) -> str:
        return f"secret {self.secret_id}"

    async def read(self) -> KeySet:
        response = await self._client.get_secret_value(SecretId=self.secret_id)
        return parse_secret(response, self.secret_id)


def parse_secret(response: Mapping[str, Any], secret_id: str) -> KeySet:
    """The key set in a GetSecretValue response (the daemon's and the tools' alike)."""
    text = response.get("SecretString")
    if text is None:
        raise KeySetError(f"secret {secret_id} has no SecretString (a binary secret?)")
    return KeySet.parse(text)
