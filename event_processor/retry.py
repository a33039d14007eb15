"""The one retry policy, built from constants (or a test's zero waits) and shared by all parts.

Ownership: botocore's standard retry mode retries each HTTP call (throttles, 5xx, resets) a
few times. This policy sits above it and owns what botocore cannot see: PutRecords entries
that failed inside a 200 response, SQS batch entries that failed, and outages longer than
botocore's own attempts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from event_processor import constants
from event_processor.errors import is_retriable


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped in both attempts and time."""

    initial_s: float = constants.RETRY_INITIAL_S
    max_backoff_s: float = constants.RETRY_MAX_BACKOFF_S
    max_attempts: int = constants.SQS_CALL_MAX_ATTEMPTS
    deadline_s: float = constants.SQS_CALL_DEADLINE_S
    # How long a submission's dead letters may wait for the DLQ, from its receive (tests
    # shorten it to show what happens after).
    letters_deadline_s: float = constants.DLQ_RETRY_DEADLINE_S
    # How long a submission's records may keep failing before it is left for redelivery
    # (tests shorten it, as they shorten the letters').
    records_deadline_s: float = constants.PUBLISH_RETRY_DEADLINE_S

    def with_limits(self, max_attempts: int, deadline_s: float) -> RetryPolicy:
        return replace(self, max_attempts=max_attempts, deadline_s=deadline_s)

    def for_records(self) -> RetryPolicy:
        """PutRecords entries: retried for as long as Kinesis may take to come back."""
        return self.with_limits(constants.PUBLISH_RETRY_MAX_ATTEMPTS, self.records_deadline_s)

    def for_letters(self) -> RetryPolicy:
        """Dead letters' SendMessageBatch: retried for as long as their messages may wait."""
        return self.with_limits(constants.PUBLISH_RETRY_MAX_ATTEMPTS, self.letters_deadline_s)

    def retrying(self) -> AsyncRetrying:
        """A tenacity controller for one call (retrying what is_retriable names); re-raises
        the last error when it gives up. Its strategies also drive a Backoff."""
        return AsyncRetrying(
            wait=wait_random_exponential(multiplier=self.initial_s, max=self.max_backoff_s),
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.deadline_s),
            retry=retry_if_exception(is_retriable),
            reraise=True,
        )


class Backoff:
    """Per-lane retry state for failures that arrive as data (PutRecords entries).

    tenacity's wrappers drive a call; a failed PutRecords entry is not a call we can re-run
    on its own, so the lane keeps a RetryCallState and asks the same tenacity strategies
    for its next wait and whether to stop.
    """

    __slots__ = ("_controller", "_state")

    def __init__(self, controller: AsyncRetrying, started_at: float | None = None) -> None:
        """`started_at` (time.monotonic) is when the first attempt began, if before now: the
        deadline counts from there, as tenacity's own loop counts it."""
        self._controller = controller
        self._state = RetryCallState(retry_object=controller, fn=None, args=(), kwargs={})
        if started_at is not None:
            self._state.start_time = started_at

    @property
    def attempts(self) -> int:
        return self._state.attempt_number

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt, or None when the policy gives up."""
        state = self._state
        state.outcome_timestamp = time.monotonic()
        stop: Any = self._controller.stop
        if stop(state):
            return None
        wait: Any = self._controller.wait
        delay = float(wait(state))
        state.attempt_number += 1
        return delay
