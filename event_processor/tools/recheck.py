"""What the daemon would do with a dead letter's submission now: the dry run's check (`dlq
redrive --dry-run`), made with the daemon's own parts (the key set's verify, `parse_submission`,
`device_mismatch`) in the daemon's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from event_processor.auth.keyset import KeySet, device_mismatch
from event_processor.config import AuthMode, Settings
from event_processor.contract.parse import parse_submission
from event_processor.contract.records import PartitionKey, format_timestamp
from event_processor.contract.rules import Rejection
from event_processor.contract.signing import Envelope
from event_processor.tools.dead_letters import Letter
from event_processor.tools.keys import read_key_set

PUBLISH = "publish"  # a verdict: the daemon would publish it (some of its events may be rejected)


@dataclass(frozen=True)
class Verdict:
    """What the daemon would do with a submission now: publish it, or reject it whole."""

    rejection: Rejection | None  # None: it would be published
    events_rejected: dict[str, int]  # its events the daemon would dead-letter, by reason

    @property
    def name(self) -> str:
        return PUBLISH if self.rejection is None else self.rejection.reason.value


class ContractCheck:
    """The daemon's own checks on a submission, in its order (pipeline.Pipeline._process): the
    signature when a key set is given, then the body with `parse_submission`, then the device the
    body names against the one that signed it. Nothing it returns holds a key or a MAC."""

    def __init__(
        self,
        keys: KeySet | None = None,
        *,
        enforce: bool = True,
        partition_key: PartitionKey = PartitionKey.DEVICE_ID,
    ) -> None:
        self.keys = keys
        self.enforce = enforce  # AUTH_MODE=monitor: a bad signature is counted, not rejected
        self._partition_key = partition_key

    def __call__(self, letter: Letter) -> Verdict:
        body = letter.body
        signer: Envelope | None = None
        if self.keys is not None:
            checked = self.keys.verify(letter.original_attributes(), body)
            if isinstance(checked, Rejection):
                if self.enforce:
                    return Verdict(checked, {})
            else:
                signer = checked
        processed_at = format_timestamp(datetime.now(UTC))
        parsed = parse_submission(body, processed_at, self._partition_key)
        if isinstance(parsed, Rejection):
            return Verdict(parsed, {})
        if signer is not None and self.enforce and parsed.device_id != signer.device_id:
            return Verdict(device_mismatch(signer, parsed.device_id), {})
        return Verdict(None, parsed.rejected.counts)

    def describe(self) -> str:
        if self.keys is None:
            return "signatures not checked: AUTH_MODE=off"
        mode = "enforce" if self.enforce else "monitor: bad signatures publish"
        return f"signatures checked ({mode}) against key ids {', '.join(sorted(self.keys.keys))}"


def contract_check(settings: Settings) -> ContractCheck:
    """The checks the daemon with these settings makes; reads the key set when AUTH_MODE is on."""
    keys = None if settings.auth_mode is AuthMode.OFF else read_key_set(settings)
    return ContractCheck(
        keys, enforce=settings.auth_mode is AuthMode.ENFORCE, partition_key=settings.partition_key
    )
