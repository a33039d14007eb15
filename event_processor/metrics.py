"""Prometheus metrics, registered on an injected registry so every test gets a fresh one."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# Submission latency spans SQS dwell time, so the buckets reach minutes.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
# One AWS call is milliseconds on a good day and botocore's retries on a bad one.
_CALL_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25)

# The memory limit of the container, as the kernel shows it inside it: cgroup v2 (Kubernetes
# on current nodes, Docker with the systemd driver) first, then cgroup v1.
CGROUP_V2_MEMORY_MAX: Final = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_MEMORY_LIMIT: Final = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
# cgroup v1 has no "max": an unlimited group reads LONG_MAX rounded down to a page
# (9223372036854771712 with 4 KiB pages). Any page size leaves that at or above 2**62, and no
# machine has 4 EiB of memory, so such a value means "no limit".
_CGROUP_V1_UNLIMITED_FROM: Final = 2**62


class _Default(enum.Enum):
    """Metrics' default memory limit: read it from the cgroup (None already means "none")."""

    READ_CGROUP = enum.auto()


READ_CGROUP: Final = _Default.READ_CGROUP


def read_memory_limit_bytes(
    v2_path: Path = CGROUP_V2_MEMORY_MAX, v1_path: Path = CGROUP_V1_MEMORY_LIMIT
) -> int | None:
    """The cgroup memory limit the process runs under, or None when there is none or no cgroup
    file can be read (not Linux, no memory controller, "max", v1's unlimited sentinel)."""
    for path in (v2_path, v1_path):
        try:
            text = path.read_bytes()
        except OSError:
            continue  # this cgroup version is not mounted here: try the other
        # The first file that exists decides, even when it says "no limit".
        try:
            limit = int(text)  # int() takes ASCII bytes and strips the newline
        except ValueError:
            return None  # "max" (v2), or nothing a limit could be read from
        return limit if 0 < limit < _CGROUP_V1_UNLIMITED_FROM else None
    return None


def read(metric: Counter | Gauge) -> dict[str, float]:
    """A counter's or gauge's current values by its one label's value ("" when it has none):
    for the log lines that repeat what /metrics says, read once an interval."""
    values: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):  # a counter's creation time, not a count
                continue
            key = next(iter(sample.labels.values()), "")
            values[key] = values.get(key, 0.0) + sample.value
    return values


def _full_name(namespace: str, name: str) -> str:
    """A metric's name under its namespace, joined as prometheus_client joins its own."""
    return "_".join(filter(None, (namespace, name)))


class OptionalGauge:
    """An unlabelled gauge that exports no sample while its value is None: an unknown value is
    absent from /metrics (its HELP and TYPE stay), never a bogus 0."""

    def __init__(
        self,
        name: str,
        documentation: str,
        registry: CollectorRegistry,
        value: float | None,
        *,
        namespace: str = "",
    ) -> None:
        self.name = _full_name(namespace, name)
        self.documentation = documentation
        self.value = value
        self._function: Callable[[], float | None] | None = None
        registry.register(self)

    def set(self, value: float | None) -> None:
        """Set the value; None withdraws the sample."""
        self.value = value

    def set_function(self, function: Callable[[], float | None]) -> None:
        """Read the value from `function` at each scrape instead (None: no sample)."""
        self._function = function

    def describe(self) -> Iterator[Metric]:
        """The family without samples, so the registry refuses a second one of the same name."""
        yield GaugeMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        """The family, with its one sample only if there is a value."""
        family = GaugeMetricFamily(self.name, self.documentation)
        value = self.value if self._function is None else self._function()
        if value is not None:
            family.add_metric([], value)
        yield family


class Counts:
    """A labelled counter kept as plain numbers, exported when scraped: for what is counted
    once per message, where a Counter child's inc() takes a lock each time. The event loop is
    the only writer, and scrapes run on it too."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        registry: CollectorRegistry,
        *,
        namespace: str = "",
    ) -> None:
        self.name = _full_name(namespace, name)
        self.documentation = documentation
        self.label = label
        self.counts: dict[str, float] = {}  # label value -> count; the hot path adds to it
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=[self.label])

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in list(self.counts.items()):
            family.add_metric([value], count)
        yield family


class Metrics:
    """Every metric the daemon exports; names follow Prometheus conventions."""

    def __init__(
        self,
        registry: CollectorRegistry,
        namespace: str = "event_processor",
        *,
        memory_limit_bytes: int | Literal[_Default.READ_CGROUP] | None = READ_CGROUP,
    ) -> None:
        self.registry = registry
        ns = namespace
        # process_* (RSS, CPU, fds, start time) and python_info, un-namespaced as every
        # exporter names them; read from /proc at each scrape (nothing on a system without it).
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        if memory_limit_bytes is READ_CGROUP:
            # Once, at start-up: a limit resized in place is seen after the next restart.
            memory_limit_bytes = read_memory_limit_bytes()
        self.memory_limit_bytes = OptionalGauge(
            "memory_limit_bytes",
            "Memory limit of the process's cgroup (absent when it has none)",
            registry,
            memory_limit_bytes,
            namespace=ns,
        )
        self.budget_limit_bytes = Gauge(
            "memory_budget_bytes",
            "Memory budget for in-flight submissions (MEMORY_BUDGET_MB)",
            namespace=ns,
            registry=registry,
        )
        self.budget_used_bytes = Gauge(
            "memory_budget_used_bytes",
            "Bytes held of the memory budget: in-flight submissions' bodies, packed events and "
            "dead letters, and what receives in progress reserved for the bodies they may bring",
            namespace=ns,
            registry=registry,
        )
        self.budget_reserved_bytes = Gauge(
            "memory_budget_reserved_bytes",
            "Of memory_budget_used_bytes, what receives in progress reserved: idle long polls "
            "hold it until they return (it makes room for work that waits)",
            namespace=ns,
            registry=registry,
        )
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
        self.dlq_up = Gauge(
            "dlq_up",
            "0 while SendMessageBatch calls to the DLQ fail (after botocore's retries), else 1:"
            " dead letters wait, their messages held, and valid-only submissions keep flowing",
            namespace=ns,
            registry=registry,
        )
        self.dlq_letters_waiting = Gauge(
            "dlq_letters_waiting",
            "Dead letters handed to the DLQ sender and not yet acknowledged",
            namespace=ns,
            registry=registry,
        )
        self.dlq_submissions_waiting = Gauge(
            "dlq_submissions_waiting",
            "In-flight submissions whose dead letters wait for the DLQ (each holds an in-flight"
            " slot and its letters' bytes of the memory budget until they are sent)",
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
        self.put_window_records = Gauge(
            "put_window_records",
            "The sink's congestion window: records PutRecords may have in flight",
            namespace=ns,
            registry=registry,
        )
        self.put_congestion_cuts = Counter(
            "put_congestion_cuts",
            "Times the sink cut its window because PutRecords calls were slow or timed out",
            namespace=ns,
            registry=registry,
        )
        # Order as Kinesis acknowledged it, checked per lane (pipeline/sink.py, "Order observed").
        self.order_violations = Counter(
            "order_violations",
            "Records Kinesis acknowledged on their lane's shard with a sequence number not "
            "above their predecessor's: per-submission order broken in the stream",
            namespace=ns,
            registry=registry,
        )
        self.lane_shard_changes = Counter(
            "lane_shard_changes",
            "Records acknowledged on another shard than their predecessor's (a reshard): "
            "consumers must read the parent shard to its end before the children",
            namespace=ns,
            registry=registry,
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
        # Set at start-up for each of the calls the lean path may send, and set to 0 if one
        # falls back at a call (aws/lean.py); absent with LEAN_AWS_CALLS=false.
        self.lean_path = Gauge(
            "lean_path",
            "1 while an AWS operation is sent by the lean request path, 0 when it goes by the"
            " client's own (its model needs it, or the lean path could not be prepared or broke"
            " at a call: see the lean_path_unavailable log line)",
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

        # Sensor authentication (docs/authentication.md); no device labels: those are unbounded.
        self.auth_mode = Gauge(
            "auth_mode",
            "1 for the AUTH_MODE in use (off, monitor or enforce)",
            ["mode"],
            namespace=ns,
            registry=registry,
        )
        # Once per message each: plain counts (Counts), not Counter children.
        self.auth_results = Counts(
            "auth_results",
            "Submissions whose signature was checked, by result: ok, or the reason it failed"
            " (rejected under enforce, only counted under monitor)",
            "result",
            registry,
            namespace=ns,
        )
        self.auth_verified = Counts(
            "auth_verified",
            "Valid signatures, by the key id that made them: a rotation's old key falls to 0",
            "key_id",
            registry,
            namespace=ns,
        )
        self.auth_keyset_age = OptionalGauge(
            "auth_keyset_age_seconds",
            "Seconds since the key set in use was read (absent before the first read)",
            registry,
            None,
            namespace=ns,
        )
        self.auth_keyset_refresh_interval = OptionalGauge(
            "auth_keyset_refresh_interval_seconds",
            "AUTH_KEYS_REFRESH_SECONDS (absent when AUTH_MODE is off)",
            registry,
            None,
            namespace=ns,
        )
        self.auth_keyset_keys = Gauge(
            "auth_keyset_keys",
            "Master keys in the key set in use",
            namespace=ns,
            registry=registry,
        )
        self.auth_keyset_revoked_devices = Gauge(
            "auth_keyset_revoked_devices",
            "Revoked devices in the key set in use: a revocation has landed once this moves",
            namespace=ns,
            registry=registry,
        )
        self.auth_keyset_refresh_failures = Counter(
            "auth_keyset_refresh_failures",
            "Key set refreshes that failed (unreadable or invalid): the last good set is kept",
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
