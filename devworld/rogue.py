"""The demo's rogue device: a principal allowed to send to the queue, holding the stolen key of
one fleet device (the thief's) and sending telemetry in the name of another (the victim's).

Each round it tries the three forgeries a signing daemon must refuse (docs/authentication.md):

- unsigned: no signature at all (`signature_missing`);
- forged: the envelope names the victim, but the MAC is made with the thief's key
  (`signature_invalid`: the victim's key is derived from its own id);
- mismatched: a genuine signature of the thief over a body whose device_id is the victim's
  (`device_mismatch`).

Every body is otherwise valid, so that only authentication can stop it.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from event_processor.contract import signing
from event_processor.contract.rules import Reason
from sensor_fleet.generator import encode, make_submission
from sensor_fleet.signer import DeviceSigner


class Forgery(StrEnum):
    UNSIGNED = "unsigned"
    FORGED = "forged"
    MISMATCHED = "mismatched"


# What the daemon must reject each forgery as.
EXPECTED: Final[Mapping[Forgery, Reason]] = {
    Forgery.UNSIGNED: Reason.SIGNATURE_MISSING,
    Forgery.FORGED: Reason.SIGNATURE_INVALID,
    Forgery.MISMATCHED: Reason.DEVICE_MISMATCH,
}
_DESCRIPTIONS: Final[Mapping[Forgery, str]] = {
    Forgery.UNSIGNED: "unsigned",
    Forgery.FORGED: "signed with the stolen key, naming the victim",
    Forgery.MISMATCHED: "signed as the thief, body naming the victim",
}


@dataclass(frozen=True, slots=True)
class Attempt:
    """One forged submission, as it is sent."""

    forgery: Forgery
    submission_id: str
    body: str
    attributes: dict[str, dict[str, str]] | None


class Rogue:
    """The rogue device: what it sent, by forgery, and what became of it."""

    def __init__(self, stolen: DeviceSigner, victim: str, rng: random.Random) -> None:
        if victim == stolen.device_id:
            raise ValueError("the victim must be another device than the thief")
        self.stolen = stolen
        self.victim = victim
        self._rng = rng
        # Submission ids SQS accepted, by forgery.
        self.sent: dict[Forgery, list[str]] = {forgery: [] for forgery in Forgery}

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.sent.values())

    def attempts(self) -> list[Attempt]:
        """One of each forgery, every body claiming to come from the victim."""
        attempts = []
        for forgery in Forgery:
            doc = make_submission(self._rng, self.victim, invalid_probability=0.0)
            body = encode(doc)
            attempts.append(Attempt(forgery, doc["submission_id"], body, self._sign(forgery, body)))
        return attempts

    def _sign(self, forgery: Forgery, body: str) -> dict[str, dict[str, str]] | None:
        stolen = self.stolen
        if forgery is Forgery.UNSIGNED:
            return None
        if forgery is Forgery.FORGED:
            return signing.signature_attributes(stolen.device_key, stolen.key_id, self.victim, body)
        return stolen.attributes(body)

    def record(self, attempts: Sequence[Attempt], accepted: Collection[str]) -> None:
        """Note which attempts SQS accepted (`accepted`: their bodies, as Sender returns them)."""
        for attempt in attempts:
            if attempt.body in accepted:
                self.sent[attempt.forgery].append(attempt.submission_id)

    def verdict(self, rejected: Mapping[str, float], stream_ids: Collection[str]) -> RogueVerdict:
        """Judge the run: `rejected` is the daemon's submissions_rejected_total by reason,
        `stream_ids` the submission ids of every record in the stream."""
        ours = {submission_id for ids in self.sent.values() for submission_id in ids}
        return RogueVerdict(
            thief=self.stolen.device_id,
            victim=self.victim,
            sent={forgery: len(ids) for forgery, ids in self.sent.items()},
            rejected={forgery: int(rejected.get(EXPECTED[forgery], 0)) for forgery in Forgery},
            in_stream=sum(1 for submission_id in stream_ids if submission_id in ours),
        )


@dataclass(frozen=True)
class RogueVerdict:
    """Whether every submission of the rogue was rejected as it should be, and none published.

    A rejection counted more than once (a redelivery) still means the submission was rejected,
    so the count must reach what was sent, not equal it.
    """

    thief: str
    victim: str
    sent: dict[Forgery, int] = field(default_factory=dict)
    rejected: dict[Forgery, int] = field(default_factory=dict)
    in_stream: int = 0  # records of the rogue's submissions found in the stream

    @property
    def all_rejected(self) -> bool:
        return all(self.rejected[f] >= n for f, n in self.sent.items())

    @property
    def ok(self) -> bool:
        """It sent something, every submission was rejected, and none reached the stream."""
        return sum(self.sent.values()) > 0 and self.all_rejected and self.in_stream == 0

    def lines(self) -> list[str]:
        """The report, one line a forgery, then the outcome."""
        total = sum(self.sent.values())
        lines = [
            f"rogue device: the stolen key of fleet device {self.thief}, claiming fleet device "
            f"{self.victim}"
        ]
        for forgery, sent in self.sent.items():
            lines.append(
                f"  {_DESCRIPTIONS[forgery]}: sent {sent}, rejected as "
                f"{EXPECTED[forgery].value} {self.rejected[forgery]}"
            )
        every = "every one rejected" if self.all_rejected else "NOT every one rejected"
        lines.append(
            f"rogue: {total} submissions, {every}; its records in the stream: {self.in_stream}"
        )
        return lines
