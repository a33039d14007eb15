"""batcher.retry_entries: an SQS batch call, retried for its retriable failures only (pure
logic: the call is a function of ours that answers as SQS would)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from prometheus_client import CollectorRegistry

from event_processor.errors import BatchEntryFailed
from event_processor.metrics import Metrics
from event_processor.pipeline.batcher import retry_entries
from event_processor.retry import RetryPolicy

NO_WAIT = RetryPolicy(initial_s=0.0, max_backoff_s=0.0, max_attempts=4, deadline_s=60.0)
OPERATION = "DeleteMessageBatch"


def _entry(index: int, item: str) -> dict[str, str]:
    return {"Id": str(index), "ReceiptHandle": item}


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, OPERATION)


class Sqs:
    """Answers each call from a script: a list of what to do per call, in turn."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.sent: list[list[str]] = []  # the receipt handles of each call

    async def call(self, entries: list[dict[str, str]]) -> dict[str, Any]:
        self.sent.append([e["ReceiptHandle"] for e in entries])
        step: Any = self.script.pop(0) if self.script else "ok"
        if isinstance(step, BaseException):
            raise step
        failing: dict[str, bool] = {} if step == "ok" else step  # handle -> SenderFault
        return {
            "Successful": [{"Id": e["Id"]} for e in entries if e["ReceiptHandle"] not in failing],
            "Failed": [
                {"Id": e["Id"], "SenderFault": failing[e["ReceiptHandle"]], "Code": "X"}
                for e in entries
                if e["ReceiptHandle"] in failing
            ],
        }


async def _run(
    sqs: Sqs, items: list[str], policy: RetryPolicy = NO_WAIT
) -> tuple[list[BaseException | None], float | None]:
    """The outcomes, and the retries the metrics counted."""
    registry = CollectorRegistry()
    outcomes = await retry_entries(
        OPERATION, items, _entry, sqs.call, policy=policy, metrics=Metrics(registry)
    )
    retries = registry.get_sample_value("event_processor_retries_total", {"operation": OPERATION})
    return outcomes, retries or 0.0


async def test_a_batch_that_succeeds_is_sent_once() -> None:
    """A batch whose every entry succeeds is sent once, with no retry."""
    sqs = Sqs("ok")
    outcomes, retries = await _run(sqs, ["a", "b", "c"])
    assert outcomes == [None, None, None]
    assert sqs.sent == [["a", "b", "c"]]
    assert retries == 0


async def test_only_the_entries_that_failed_retriably_are_sent_again() -> None:
    """Only the entries that failed retriably are sent again; a sender fault fails at once."""
    sqs = Sqs({"b": False, "c": True}, "ok")
    outcomes, retries = await _run(sqs, ["a", "b", "c"])
    assert sqs.sent == [["a", "b", "c"], ["b"]]
    assert outcomes[:2] == [None, None]
    assert isinstance(outcomes[2], BatchEntryFailed)  # a sender fault fails at once
    assert retries == 1


@pytest.mark.parametrize(
    "error", [_client_error("ThrottlingException"), EndpointConnectionError(endpoint_url="x")]
)
async def test_a_retriable_call_error_is_retried(error: Exception) -> None:
    """A retriable error of the whole call sends the whole batch again."""
    sqs = Sqs(error, "ok")
    outcomes, retries = await _run(sqs, ["a", "b"])
    assert outcomes == [None, None]
    assert sqs.sent == [["a", "b"], ["a", "b"]]
    assert retries == 1


async def test_a_non_retriable_call_error_fails_every_entry_at_once() -> None:
    """A non-retriable error of the call fails every entry at once, with no retry."""
    sqs = Sqs(_client_error("AccessDenied"))
    outcomes, retries = await _run(sqs, ["a", "b"])
    assert len(sqs.sent) == 1
    assert all(isinstance(o, BatchEntryFailed) and o.code == "ClientError" for o in outcomes)
    assert retries == 0


async def test_it_gives_up_after_the_policy_attempts() -> None:
    """An entry that keeps failing is given up after the policy's attempts."""
    sqs = Sqs(*[{"a": False}] * 10)
    outcomes, retries = await _run(sqs, ["a", "b"])
    assert sqs.sent == [["a", "b"], ["a"], ["a"], ["a"]]  # max_attempts=4
    assert outcomes[1] is None
    assert isinstance(outcomes[0], BatchEntryFailed)
    assert outcomes[0].code == "RetriableEntries"
    assert retries == 3


async def test_it_gives_up_at_the_deadline() -> None:
    """A deadline of zero: the first failure is also the last attempt."""
    policy = RetryPolicy(initial_s=0.0, max_backoff_s=0.0, max_attempts=10, deadline_s=0.0)
    sqs = Sqs(_client_error("ThrottlingException"), "ok")
    outcomes, retries = await _run(sqs, ["a"], policy)
    assert len(sqs.sent) == 1
    assert isinstance(outcomes[0], BatchEntryFailed)
    assert retries == 0


async def test_a_bug_in_the_call_is_raised_not_retried() -> None:
    """A bug in the call (TypeError) is raised, never retried."""
    sqs = Sqs(TypeError("a bug"))
    with pytest.raises(TypeError, match="a bug"):
        await _run(sqs, ["a"])
    assert len(sqs.sent) == 1
