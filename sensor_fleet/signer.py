"""Which key signs a sensor's submission (docs/authentication.md). The envelope itself is
event_processor.contract.signing's, and the key set and enrolment are read as the tools read them.

A real sensor holds one device key, issued at enrolment: `DeviceSigner`. The simulated fleet
stands for many devices at once, so it holds a master key of the key set and derives each
device's key as `event-processor keys derive` would issue it: `FleetSigner`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from event_processor.auth.keyset import KeySet
from event_processor.contract import signing
from event_processor.tools.keys import choose_key_id, read_enrolment


@dataclass(frozen=True, slots=True)
class DeviceSigner:
    """One device's key: it signs as that device, and as no other."""

    device_id: str
    key_id: str
    device_key: bytes = field(repr=False)

    @classmethod
    def from_enrolment(cls, text: str) -> DeviceSigner:
        """From what `keys derive` printed (ValueError, never quoting the key, if it is not)."""
        device_id, key_id, device_key = read_enrolment(text)
        return cls(device_id, key_id, device_key)

    def attributes(self, body: str) -> dict[str, dict[str, str]]:
        """SendMessage's MessageAttributes for `body`, signed as this device."""
        return signing.signature_attributes(self.device_key, self.key_id, self.device_id, body)


class FleetSigner:
    """Every simulated device's key, derived from one master key of the key set.

    A revoked device still signs, as a revoked machine would with the key it was issued: the
    daemon is the one to refuse it (device_revoked).
    """

    def __init__(self, keys: KeySet, key_id: str | None = None) -> None:
        """`key_id` picks the master key; it may be left out when the set has only one
        (aws.UsageError otherwise, as for `keys derive`)."""
        self.key_id = choose_key_id(keys, key_id)
        self._keys = keys
        self._devices: dict[str, DeviceSigner] = {}

    def __repr__(self) -> str:
        return f"FleetSigner(key_id={self.key_id!r}, devices={len(self._devices)})"

    def device(self, device_id: str) -> DeviceSigner:
        """The device's own signer, its key derived once."""
        signer = self._devices.get(device_id)
        if signer is None:
            key = self._keys.device_key(self.key_id, device_id)
            signer = self._devices[device_id] = DeviceSigner(device_id, self.key_id, key)
        return signer

    def attributes(self, device_id: str, body: str) -> dict[str, dict[str, str]]:
        """The MessageAttributes for `body` as the device `device_id` sends it (the sensor's
        own id, whatever the body's device_id field says)."""
        return self.device(device_id).attributes(body)
