"""A DLQ message as the tools receive it: classified by the daemon's own letter format
(`event_processor.contract.letters`), with what an event letter lists counted, not kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from event_processor.contract.letters import (
    KIND_EVENTS,
    KIND_SUBMISSION,
    OUR_ATTRIBUTES,
    EventLetter,
    RejectedEventEntry,
    message_size,
    read_event_letter,
    string_attribute,
)
from event_processor.contract.rules import Reason

# Dead letters come in two kinds (docs/contract.md, "Dead letters"): a rejected *submission* keeps its
# original body and attributes plus ours (`reason`, `detail`, `source_message_id`,
# `receive_count`); an *event* letter lists rejected events of one valid submission. A message
# without a `reason` attribute was moved by SQS's own redrive policy (after maxReceiveCount):
# it is an original submission, listed under the reason `none`.
NO_REASON = "none"
# What a letter's `reason` attribute may be, so what `--reason` may name: a typo is an error,
# never a filter that silently matches nothing.
KNOWN_REASONS = (*(reason.value for reason in Reason), NO_REASON)
# Rejected events of an event letter shown in an example: the first ones of the example's reason.
EXAMPLE_EVENTS = 2


@dataclass(frozen=True)
class LetterEvents:
    """What an event letter lists, without keeping every event (a letter may list 10^5)."""

    submission_id: str
    device_id: str
    part: int
    parts: int
    by_reason: dict[str, int]  # rejected events by each event's own reason
    first: dict[str, tuple[RejectedEventEntry, ...]]  # the first EXAMPLE_EVENTS per reason

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    @classmethod
    def of(cls, letter: EventLetter) -> LetterEvents:
        by_reason: Counter[str] = Counter()
        first: dict[str, list[RejectedEventEntry]] = {}
        for entry in letter.events:
            by_reason[entry.reason] += 1
            shown = first.setdefault(entry.reason, [])
            if len(shown) < EXAMPLE_EVENTS:
                shown.append(entry)
        return cls(
            letter.submission_id,
            letter.device_id,
            letter.part,
            letter.parts,
            dict(by_reason.most_common()),
            {reason: tuple(entries) for reason, entries in first.items()},
        )


@dataclass(frozen=True)
class Letter:
    """One DLQ message as received, classified."""

    message_id: str
    receipt_handle: str
    body: str
    attributes: dict[str, Any]  # MessageAttributes
    system: dict[str, str]  # Attributes: SentTimestamp, ApproximateReceiveCount...
    kind: str  # KIND_SUBMISSION or KIND_EVENTS
    reason: str  # the `reason` attribute ("mixed" for a letter of events of several reasons)
    events: LetterEvents | None  # what an event letter lists; None for a submission

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Letter:
        body = str(message.get("Body", ""))
        attributes = dict(message.get("MessageAttributes") or {})
        letter = read_event_letter(body, attributes)
        return cls(
            message_id=str(message["MessageId"]),
            receipt_handle=str(message["ReceiptHandle"]),
            body=body,
            attributes=attributes,
            system={str(k): str(v) for k, v in (message.get("Attributes") or {}).items()},
            kind=KIND_SUBMISSION if letter is None else KIND_EVENTS,
            reason=string_attribute(attributes, "reason") or NO_REASON,
            events=None if letter is None else LetterEvents.of(letter),
        )

    @property
    def group_id(self) -> str | None:
        """The letter's MessageGroupId in a FIFO DLQ (the daemon gives each letter the group of
        the message it came from); None in a standard queue."""
        return self.system.get("MessageGroupId")

    def original_attributes(self) -> dict[str, dict[str, Any]]:
        """The sender's message attributes, without ours: what redrive sends back."""
        kept: dict[str, dict[str, Any]] = {}
        for name, value in self.attributes.items():
            if name in OUR_ATTRIBUTES or not isinstance(value, Mapping):
                continue
            attribute: dict[str, Any] = {"DataType": value["DataType"]}
            for part in ("StringValue", "BinaryValue"):
                if part in value:
                    attribute[part] = value[part]
            kept[name] = attribute
        return kept

    def size(self) -> int:
        """Bytes SQS counts toward a batch when redrive sends it back."""
        return message_size(self.body, self.original_attributes())
