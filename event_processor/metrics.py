"""Prometheus metrics, registered on an injected registry so every test gets a fresh one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Submission latency spans SQS dwell time, so the buckets reach minutes.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
# One AWS call is milliseconds on a good day and botocore's retries on a bad one.
_CALL_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25)


class Metrics:
    """Every metric the daemon exports; names follow Prometheus conventions."""

    def __init__(self, registry: CollectorRegistry, namespace: str = "event_processor") -> None:
        self.registry = registry
        ns = namespace
        self.messages_received = Counter(
            "messages_received", "SQS messages received", namespace=ns, registry=registry
        )
        self.submissions = Counter(
            "submissions",
            "Submissions finished, by outcome",
            ["outcome"],
            namespace=ns,
            registry=registry,
        )
        self.events_published = Counter(
            "events_published",
            "Events published to Kinesis, by type",
            ["event_type"],
            namespace=ns,
            registry=registry,
        )
        self.events_rejected = Counter(
            "events_rejected",
            "Events rejected, by reason (whole submissions count under submissions{outcome=rejected})",
            ["reason"],
            namespace=ns,
            registry=registry,
        )
        self.submissions_rejected = Counter(
            "submissions_rejected",
            "Whole submissions rejected, by reason",
            ["reason"],
            namespace=ns,
            registry=registry,
        )
        self.dlq_sends = Counter(
            "dlq_messages_sent",
            "Messages sent to the DLQ, by kind (submission or event)",
            ["kind"],
            namespace=ns,
            registry=registry,
        )
        self.put_records_failed = Counter(
            "put_records_failed_records",
            "PutRecords entries that failed, by error code",
            ["error_code"],
            namespace=ns,
            registry=registry,
        )
        self.retries = Counter(
            "retries", "Retries, by operation", ["operation"], namespace=ns, registry=registry
        )
        self.visibility_extensions = Counter(
            "visibility_extensions",
            "Messages whose visibility the heartbeat extended",
            namespace=ns,
            registry=registry,
        )
        self.deletes_failed = Counter(
            "deletes_failed",
            "DeleteMessageBatch entries that failed (retried)",
            namespace=ns,
            registry=registry,
        )
        self.submission_latency = Histogram(
            "submission_latency_seconds",
            "Time from SQS SentTimestamp to every event of the submission published",
            namespace=ns,
            registry=registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.aws_call_duration = Histogram(
            "aws_call_duration_seconds",
            "AWS call latency, by operation (botocore retries included)",
            ["operation"],
            namespace=ns,
            registry=registry,
            buckets=_CALL_BUCKETS,
        )
        self.aws_call_errors = Counter(
            "aws_call_errors",
            "AWS calls that raised, by operation",
            ["operation"],
            namespace=ns,
            registry=registry,
        )
        self.in_flight_submissions = Gauge(
            "in_flight_submissions",
            "Submissions received and not yet finished",
            namespace=ns,
            registry=registry,
        )
        self.in_flight_records = Gauge(
            "in_flight_records",
            "Records accepted by the sink and not yet published",
            namespace=ns,
            registry=registry,
        )

    @contextmanager
    def aws_call(self, operation: str) -> Iterator[None]:
        """Time one AWS call and count it as an error if it raises."""
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.aws_call_errors.labels(operation).inc()
            raise
        finally:
            self.aws_call_duration.labels(operation).observe(time.perf_counter() - start)
