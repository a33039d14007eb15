"""Faults (as opposed to bad input, which is data): what is retried and what is not."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

# ClientError codes that no retry will fix; everything else from AWS is treated as transient
# (throttling, 5xx, connection and read errors), capped by the retry policy.
NON_RETRIABLE_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "InvalidArgumentException",
        "ValidationException",
        "InvalidParameterValue",
        "InvalidMessageContents",
        "MessageTooLong",
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "KMSAccessDeniedException",
        "KMSDisabledException",
    }
)


# Codes that mean "slow down", per PutRecords entry or for a whole call: retriable, and counted
# as throttling (the sink backs the lane off and shrinks what it sends).
THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "KMSThrottlingException",
    }
)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a failed call, or the exception's class name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Unknown"))
    return type(exc).__name__


def is_retriable(exc: BaseException) -> bool:
    """Retry only named AWS failures; a bug (TypeError, KeyError...) must surface, not spin."""
    if isinstance(exc, ClientError):
        return error_code(exc) not in NON_RETRIABLE_CODES
    return isinstance(exc, BotoCoreError)


class PublishFailed(Exception):
    """A submission's records could not be published within the retry policy."""

    def __init__(self, error_code: str, attempts: int) -> None:
        super().__init__(f"publish failed after {attempts} attempts: {error_code}")
        self.error_code = error_code
        self.attempts = attempts


class BatchEntryFailed(Exception):
    """One entry of an SQS batch call failed, after retries."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(f"{operation} entry failed: {code}: {message}")
        self.operation = operation
        self.code = code
