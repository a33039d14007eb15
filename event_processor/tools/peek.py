"""Reading a queue without consuming it, and the receive both DLQ tools make."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from event_processor import constants
from event_processor.tools.dead_letters import Letter

# With VisibilityTimeout=0 SQS may hand out the same messages again and again (moto always
# returns the oldest ten): a peek stops after this many receives in a row brought nothing new.
PEEK_IDLE_RECEIVES = 5


def receive(
    sqs: Any, queue_url: str, *, count: int, visibility_s: int, wait_s: int
) -> list[dict[str, Any]]:
    response = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=count,
        VisibilityTimeout=visibility_s,
        WaitTimeSeconds=wait_s,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    return list(response.get("Messages", []))


def peek(sqs: Any, queue_url: str, *, idle_receives: int = PEEK_IDLE_RECEIVES) -> Iterator[Letter]:
    """Yield distinct messages received with VisibilityTimeout=0: nothing is hidden or deleted.

    Ends when `idle_receives` receives in a row brought no message not yet seen. The caller
    stops earlier by not asking for more.
    """
    seen: set[str] = set()
    idle = 0
    while idle < idle_receives:
        batch = receive(
            sqs, queue_url, count=constants.SQS_MAX_BATCH_ENTRIES, visibility_s=0, wait_s=0
        )
        new = [m for m in batch if m["MessageId"] not in seen]
        idle = 0 if new else idle + 1
        for message in new:
            seen.add(message["MessageId"])
            yield Letter.from_message(message)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
