"""What SqsSource asks of a FIFO queue and what it makes of the answer (a stub client that
records requests: pure request building, no AWS)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from event_processor.metrics import Metrics
from event_processor.pipeline.source import SqsSource
from event_processor.retry import RetryPolicy


class RecordingSqs:
    """Answers every receive with one message of group "g" and records the requests."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def receive_message(self, **request: Any) -> dict[str, Any]:
        self.requests.append(request)
        attributes = {"ApproximateReceiveCount": "2", "MessageGroupId": "g"}
        return {
            "Messages": [
                {"MessageId": "m", "ReceiptHandle": "r", "Body": "b", "Attributes": attributes}
            ]
        }


def source(client: RecordingSqs, *, fifo: bool) -> SqsSource:
    metrics = Metrics(CollectorRegistry(), memory_limit_bytes=None)
    return SqsSource(
        client,  # type: ignore[arg-type]
        "https://sqs/q",
        metrics,
        RetryPolicy(),
        wait_time_s=1,
        visibility_timeout_s=30,
        fifo=fifo,
    )


async def test_a_fifo_receive_asks_for_the_group_with_an_attempt_id_of_its_own() -> None:
    """FIFO: MessageGroupId is asked for and kept; each call has its own attempt id (the one
    botocore's retries of that call resend)."""
    client = RecordingSqs()
    fifo = source(client, fifo=True)
    [message] = await fifo.receive(10)
    await fifo.receive(10)
    assert message.group_id == "g"
    assert message.receive_count == 2
    first, second = client.requests
    assert "MessageGroupId" in first["MessageSystemAttributeNames"]
    assert first["ReceiveRequestAttemptId"] != second["ReceiveRequestAttemptId"]
    assert len(first["ReceiveRequestAttemptId"]) <= 128


async def test_a_standard_receive_asks_for_neither() -> None:
    """Standard: no group asked for, no attempt id (it applies to FIFO queues only)."""
    client = RecordingSqs()
    await source(client, fifo=False).receive(10)
    [request] = client.requests
    assert "MessageGroupId" not in request["MessageSystemAttributeNames"]
    assert "ReceiveRequestAttemptId" not in request
