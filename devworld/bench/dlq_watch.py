"""Counting a DLQ's messages while a daemon fills it: left in the queue, or consumed as they come.

Consuming keeps the DLQ shallow. moto's SendMessage builds every queue attribute, which is
O(queue depth), for each message it stores, an emulator cost that SQS does not have: alone,
boto3 to moto, 52 SendMessageBatch/s into an empty queue and 8/s at 15,000 messages. In the
hostile scenario's 120 s runs both modes gave the same rate (the world was busy elsewhere);
longer runs may differ.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

from devworld.emulator import Emulator, queue_depth

Mode = Literal["consume", "keep"]
MODES: tuple[Mode, ...] = ("consume", "keep")

# ReceiveMessage returns at most 10 messages; a short long poll lets stop() end the thread soon.
_RECEIVE_MAX = 10
_RECEIVE_WAIT_S = 1
# Long enough that nothing we received comes back before we delete it.
_RECEIVE_VISIBILITY_S = 300


class DeadLetterWatch:
    """How many messages reached `dlq_url`, and when the first did (monotonic clock)."""

    def __init__(self, emulator: Emulator, dlq_url: str, mode: Mode) -> None:
        self._sqs = emulator.boto3_client("sqs")
        self._dlq_url = dlq_url
        self.mode = mode
        self.consumed = 0
        self.consumed_bytes = 0
        self.first_at: float | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if mode == "consume":
            self._thread = threading.Thread(target=self._run, name="dlq-watch", daemon=True)
            self._thread.start()

    def poll(self) -> None:
        """In "keep" mode, notice the first dead letter; call it on every look at the queues."""
        if self.first_at is None and self.mode == "keep" and self._depth() > 0:
            self.first_at = time.monotonic()

    def stop(self) -> int:
        """Stop consuming; every message that reached the DLQ, consumed or still in it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise RuntimeError("counting the DLQ failed") from self._error
        return self.consumed + self._depth()

    def _depth(self) -> int:
        return queue_depth(self._sqs, self._dlq_url)

    def _run(self) -> None:
        try:
            self._consume()
        except Exception as exc:  # handed to stop(), which raises it
            self._error = exc

    def _consume(self) -> None:
        while not self._stop.is_set():
            messages: list[dict[str, Any]] = self._sqs.receive_message(
                QueueUrl=self._dlq_url,
                MaxNumberOfMessages=_RECEIVE_MAX,
                WaitTimeSeconds=_RECEIVE_WAIT_S,
                VisibilityTimeout=_RECEIVE_VISIBILITY_S,
            ).get("Messages", [])
            if not messages:
                continue
            if self.first_at is None:
                self.first_at = time.monotonic()
            response = self._sqs.delete_message_batch(
                QueueUrl=self._dlq_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
            # A failed delete would be counted twice once it reappeared: stop loudly instead.
            if response.get("Failed"):
                raise RuntimeError(f"DLQ delete failed: {response['Failed']}")
            self.consumed += len(messages)
            self.consumed_bytes += sum(len(m["Body"].encode()) for m in messages)
