"""The output records (docs/contract.md, "Output"): event ids, the record writer, and a
submission's accepted events as the sink takes them.

Each accepted event's data is encoded once, when it is validated; its record's bytes are
built only when the sink sends it, so what a submission holds between the two is its events'
JSON plus a few bytes each.
"""

from __future__ import annotations

import hashlib
import uuid
from array import array
from collections.abc import Iterator
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, NamedTuple, Protocol

import orjson

from event_processor import constants
from event_processor.contract.rules import EventType, Reason, Rejection


class PartitionKey(StrEnum):
    DEVICE_ID = "device_id"
    SUBMISSION_ID = "submission_id"


class Record(NamedTuple):
    """One Kinesis record, ready to send: its bytes are final.

    A tuple, not a frozen dataclass: the sink builds one per record as it sends it, and a
    tuple is the cheapest object to build (docs/performance.md).
    """

    data: bytes
    partition_key: str
    sequence: int
    event_type: EventType

    @property
    def size(self) -> int:
        # Kinesis counts data plus partition key toward both the record and request limits.
        return len(self.data) + len(self.partition_key.encode())


class Records(Protocol):
    """What the sink takes as one lane: records by index, and their sizes without them."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Record: ...

    def size(self, index: int) -> int: ...


# --- event ids ------------------------------------------------------------------------------
# uuid5 is SHA-1 over the namespace's bytes and the name; the name is
# f"{device_id}:{submission_id}:{sequence}", so the hash of everything before the sequence is
# computed once per submission and copied per event instead of building a uuid.UUID each time.
# The device is in the name so that two devices sending the same submission_id (a cloned
# image, a hostile sensor) never share an event id, which consumers deduplicate on.
_EVENT_ID_PREFIX: Final = uuid.UUID(constants.EVENT_ID_NAMESPACE).bytes
# uuid5's variant bits (RFC 4122: 10xx) on the first hex digit of clock_seq_hi.
_VARIANT_DIGIT: Final = {f"{n:x}": "89ab"[n & 3] for n in range(16)}


def _event_id_hash(device_id: str, submission_id: str) -> Any:
    name = f"{device_id}:{submission_id}:".encode()
    return hashlib.sha1(_EVENT_ID_PREFIX + name, usedforsecurity=False)


def _event_id_from(prefix: Any, sequence: bytes) -> str:
    """The id from the submission's hashed prefix and the sequence's decimal digits."""
    digest = prefix.copy()
    digest.update(sequence)
    h = digest.hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT_DIGIT[h[16]]}{h[17:20]}-{h[20:32]}"


def event_id(device_id: str, submission_id: str, sequence: int) -> str:
    """Deterministic: a redelivered submission gets the same ids, so consumers can dedup."""
    return _event_id_from(_event_id_hash(device_id, submission_id), str(sequence).encode())


# --- the record writer ----------------------------------------------------------------------

_TYPE_BYTES: Final = {t: t.value.encode() for t in EventType}
_TYPE_CODES: Final = list(EventType)
_TYPE_INDEX: Final = {t: index for index, t in enumerate(_TYPE_CODES)}
_TYPE_SIZES: Final = {t: len(encoded) for t, encoded in _TYPE_BYTES.items()}


class RecordWriter:
    """The one writer of output records: bytes built from pieces.

    The same bytes orjson would give for the documented dict, in its key order, with the
    submission's fields encoded once: per event only the id, type, sequence and the
    already-encoded event data are joined.
    """

    __slots__ = ("_fixed_size", "_head", "_id_hash", "_tail", "key")

    def __init__(
        self,
        submission_id: str,
        device_id: str,
        time_created: str,
        processed_at: str,
        partition_key: PartitionKey,
    ) -> None:
        self.key = device_id if partition_key is PartitionKey.DEVICE_ID else submission_id
        self._id_hash = _event_id_hash(device_id, submission_id)
        # Ids are validated lower-case UUIDs and processed_at is ours: neither needs escaping.
        self._head = (
            f'","device_id":"{device_id}","submission_id":"{submission_id}","sequence":'.encode()
        )
        self._tail = (
            b',"time_created":'
            + orjson.dumps(time_created)
            + f',"processed_at":"{processed_at}","event_data":'.encode()
        )
        # What every record of this submission has: the id, the joins, the closing brace
        # and the partition key (UUIDs are ASCII: characters are bytes).
        self._fixed_size = (
            len(b'{"event_id":"","event_type":"') + 36 + len(self._head) + len(self._tail) + 1
            + len(self.key)
        )  # fmt: skip

    def build(self, sequence: int, event_type: EventType, data: bytes | bytearray) -> bytes:
        digits = str(sequence).encode()  # in the id's hash and in the record, written once
        return b"".join(
            (
                b'{"event_id":"',
                _event_id_from(self._id_hash, digits).encode(),
                b'","event_type":"',
                _TYPE_BYTES[event_type],
                self._head,
                digits,
                self._tail,
                data,
                b"}",
            )
        )

    def encode(
        self, sequence: int, event_type: EventType, data: dict[str, Any]
    ) -> tuple[bytes, int] | Rejection:
        """The event's data encoded once and its record's size, or a rejection if the record
        would pass 1 MiB."""
        encoded = orjson.dumps(data)
        # The bytes Kinesis counts for the record (data plus key), without building it.
        size = self._fixed_size + _TYPE_SIZES[event_type] + len(str(sequence)) + len(encoded)
        if size > constants.KINESIS_MAX_RECORD_BYTES:
            return Rejection(
                Reason.RECORD_TOO_LARGE, None, f"record is {size} bytes, over Kinesis's 1 MiB limit"
            )
        return encoded, size


# What AcceptedRecords keeps per event besides its data: end offset, sequence, size, type.
_EVENT_BYTES: Final = array("q").itemsize * 2 + array("I").itemsize + 1


class AcceptedRecords:
    """A submission's accepted events: each event's data encoded once, in one buffer.

    Per event this keeps its encoded data plus 21 bytes (end offset, sequence, record size,
    type); the record itself is built only when the sink sends it (`__getitem__`). `Records`
    for the sink, which asks each record's size once before it builds it.
    """

    __slots__ = ("_data", "_ends", "_sequences", "_sizes", "_types", "writer")

    def __init__(self, writer: RecordWriter) -> None:
        self.writer = writer
        self._data = bytearray()
        self._ends = array("q")
        self._sequences = array("q")
        self._sizes = array("I")  # a record is at most 1 MiB: 32 bits are plenty
        self._types = bytearray()

    def append(self, sequence: int, event_type: EventType, data: bytes, size: int) -> None:
        """One accepted event: its encoded data and its record's size (RecordWriter.encode)."""
        self._data += data
        self._ends.append(len(self._data))
        self._sequences.append(sequence)
        self._sizes.append(size)
        self._types.append(_TYPE_INDEX[event_type])

    def __len__(self) -> int:
        return len(self._ends)

    @property
    def nbytes(self) -> int:
        """What this holds in memory, for the budget."""
        return len(self._data) + _EVENT_BYTES * len(self._ends) + 256

    def size(self, index: int) -> int:
        return self._sizes[index]

    @property
    def sequences(self) -> list[int]:
        """The accepted events' sequences, in body order."""
        return self._sequences.tolist()

    def __getitem__(self, index: int) -> Record:
        ends = self._ends
        start, end = (ends[index - 1] if index else 0), ends[index]
        sequence = self._sequences[index]
        event_type = _TYPE_CODES[self._types[index]]
        # The slice goes into the record's join as it is: one copy, not two.
        data = self.writer.build(sequence, event_type, self._data[start:end])
        return Record(data, self.writer.key, sequence, event_type)

    def __iter__(self) -> Iterator[Record]:
        """Every record, built (tests and tools; the sink builds them one by one)."""
        return map(self.__getitem__, range(len(self)))

    def event(self, index: int) -> tuple[int, EventType, bytes]:
        """An accepted event as validated: its sequence, type and encoded data."""
        ends = self._ends
        start, end = (ends[index - 1] if index else 0), ends[index]
        return self._sequences[index], _TYPE_CODES[self._types[index]], bytes(self._data[start:end])


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 UTC with microseconds and a Z, e.g. 2026-11-22T10:00:00.123456Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
