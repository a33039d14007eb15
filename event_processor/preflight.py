"""The checks before receiving: `run` makes them to start, `event-processor check` to report.

Both call the same functions with the same clients, so they cannot disagree; a failure is a
`diagnosis.StartupError`, which names what is wrong. Nothing here receives or deletes a message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import orjson
from botocore.exceptions import BotoCoreError, ClientError

from event_processor import constants, diagnosis, exitcodes, http
from event_processor.auth.keyset import KeySetError
from event_processor.config import AuthMode, Settings, mask_url
from event_processor.contract.records import PartitionKey
from event_processor.diagnosis import Resource, SourceQueue, StartupError, Where

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from types_aiobotocore_kinesis import KinesisClient
    from types_aiobotocore_sqs import SQSClient

    from event_processor.auth.keyset import KeySource
    from event_processor.retry import RetryPolicy

AWS_ERRORS = (BotoCoreError, ClientError)


@dataclass(frozen=True)
class QueueFacts:
    """What start-up reads of a queue (one GetQueueAttributes call)."""

    url: str
    arn: str
    max_message_bytes: int  # MaximumMessageSize, held to SQS's limits
    visibility_timeout_s: int
    fifo: bool
    redrive_target_arn: str | None  # RedrivePolicy's deadLetterTargetArn
    max_receive_count: int | None
    visible: int
    in_flight: int

    @classmethod
    def parse(cls, url: str, attributes: Mapping[Any, str]) -> QueueFacts:
        size = int(attributes.get("MaximumMessageSize", constants.SQS_MAX_MESSAGE_BYTES))
        redrive: dict[str, Any] = {}
        with contextlib.suppress(orjson.JSONDecodeError, TypeError):
            redrive = orjson.loads(attributes.get("RedrivePolicy", "{}")) or {}
        receives = redrive.get("maxReceiveCount")
        return cls(
            url=url,
            arn=attributes.get("QueueArn", ""),
            max_message_bytes=min(
                max(size, constants.SQS_MIN_MESSAGE_BYTES), constants.SQS_MAX_MESSAGE_BYTES
            ),
            visibility_timeout_s=int(attributes.get("VisibilityTimeout", 30)),
            fifo=attributes.get("FifoQueue", "false").lower() == "true",
            redrive_target_arn=redrive.get("deadLetterTargetArn"),
            max_receive_count=None if receives is None else int(receives),
            visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
            in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        )


@dataclass(frozen=True)
class StreamFacts:
    name: str
    status: str
    open_shards: int


@dataclass(frozen=True)
class Resolved:
    """What the daemon is built from, read once at start-up."""

    queue_url: str
    max_message_bytes: int  # the source queue's MaximumMessageSize
    dlq_max_message_bytes: int  # the DLQ's (packed letters are cut to fit it)
    fifo: bool = False  # a FIFO source (and so a FIFO DLQ): submissions in order per group


class Preflight:
    """The checks, over the daemon's own clients (app builds them as `run` uses them)."""

    def __init__(
        self,
        settings: Settings,
        sqs: SQSClient,
        kinesis: KinesisClient,
        policy: RetryPolicy,
        partitions: Mapping[str, Any],
    ) -> None:
        self._settings = settings
        self.sqs = sqs
        self.kinesis = kinesis
        self._policy = policy
        self._partitions = partitions
        self.sqs_where = diagnosis.where_of(sqs, settings.endpoint_url)
        self.kinesis_where = diagnosis.where_of(kinesis, settings.endpoint_url)

    def region(self) -> None:
        """Before any call: an unknown region (with no endpoint URL) is said to be one."""
        diagnosis.check_region(
            SourceQueue.of(self._settings).resource, self.sqs_where, self._partitions
        )

    async def _queue(self, resource: Resource, url: str) -> QueueFacts:
        try:
            response = await self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        except AWS_ERRORS as exc:
            raise diagnosis.diagnose(exc, resource, self.sqs_where, self._partitions) from exc
        return QueueFacts.parse(url, response.get("Attributes", {}))

    async def source_queue(self) -> QueueFacts:
        """Resolved (`diagnosis.SourceQueue`: QUEUE_URL, else GetQueueUrl of QUEUE_NAME) and
        read."""
        source = SourceQueue.of(self._settings)
        url = source.url
        if url is None:
            try:
                url = source.url_of(await self.sqs.get_queue_url(**source.lookup))
            except AWS_ERRORS as exc:
                raise diagnosis.diagnose(
                    exc, source.resource, self.sqs_where, self._partitions
                ) from exc
        return await self._queue(source.resource, url)

    async def dead_letter_queue(self, source: QueueFacts | None) -> QueueFacts | None:
        """The DLQ (None when DLQ_URL is unset), and that a rejected submission fits it."""
        if self._settings.dlq_url is None:
            return None
        resource = diagnosis.dlq_resource(self._settings.dlq_url)
        dlq = await self._queue(resource, self._settings.dlq_url)
        if source is not None and dlq.fifo != source.fifo:
            raise diagnosis.dlq_kind_mismatch(resource, source.fifo, self.sqs_where)
        if source is not None and dlq.max_message_bytes < source.max_message_bytes:
            raise diagnosis.dlq_too_small(
                resource, dlq.max_message_bytes, source.max_message_bytes, self.sqs_where
            )
        return dlq

    async def stream(self) -> StreamFacts:
        resource = diagnosis.stream_resource(self._settings)
        try:
            # The Kinesis client makes one attempt per call (app.kinesis_config): retried here
            # as botocore would, so a blip at start-up is not reported as a missing stream.
            retrying = self._policy.with_limits(3, constants.STARTUP_DESCRIBE_DEADLINE_S)
            async for attempt in retrying.retrying():
                with attempt:
                    response = await self.kinesis.describe_stream_summary(
                        StreamName=self._settings.stream_name
                    )
        except AWS_ERRORS as exc:
            raise diagnosis.diagnose(exc, resource, self.kinesis_where, self._partitions) from exc
        summary = response["StreamDescriptionSummary"]
        return StreamFacts(
            self._settings.stream_name,
            str(summary.get("StreamStatus", "")),
            int(summary.get("OpenShardCount", 0)),
        )

    async def resolve(self) -> Resolved:
        """`run`'s checks, in its order; the first failure raises."""
        self.region()
        source = await self.source_queue()
        await self.stream()
        dlq = await self.dead_letter_queue(source)
        dlq_max = source.max_message_bytes if dlq is None else dlq.max_message_bytes
        return Resolved(source.url, source.max_message_bytes, dlq_max, source.fifo)


async def read_key_set(source: KeySource, resource: Resource, place: Where | None) -> int:
    """The key set read once: its number of keys, or why it cannot be used (never a key)."""
    try:
        keys = await source.read()
    except KeySetError as exc:
        raise diagnosis.key_set_invalid(resource, str(exc), place) from exc
    except (OSError, *AWS_ERRORS) as exc:
        raise diagnosis.key_set_unreadable(resource, exc, place) from exc
    return len(keys.keys)


async def metrics_port_free(registry: CollectorRegistry, host: str, port: int) -> int:
    """Bind the metrics server as `run` does, then release it; the port bound."""
    try:
        runner, bound = await http.serve(http.make_app(registry, lambda: False), host, port)
    except OSError as exc:
        raise diagnosis.metrics_port_taken(host, port, exc) from exc
    await runner.cleanup()
    return bound


# --- `event-processor check`: every check, one line each -------------------------------------

OK, WARN, FAILED, SKIPPED = "ok", "warn", "FAILED", "skipped"


@dataclass
class Outcome:
    name: str
    status: str
    detail: str
    error: StartupError | None = None


@dataclass
class Report:
    """Every check's outcome in `run`'s order; the exit code is the one `run` would give."""

    outcomes: list[Outcome] = field(default_factory=list)

    async def check(self, name: str, step: Callable[[], Awaitable[tuple[str, str]]]) -> bool:
        """Run one check: its (status, detail), or its message when it fails. False if it
        failed."""
        try:
            status, detail = await step()
        except StartupError as exc:
            self.outcomes.append(Outcome(name, FAILED, str(exc), exc))
            return False
        self.add(name, status, detail)
        return True

    def add(self, name: str, status: str, detail: str) -> None:
        self.outcomes.append(Outcome(name, status, detail))

    @property
    def exit_code(self) -> int:
        for outcome in self.outcomes:
            if outcome.error is not None:
                return outcome.error.exit_code
        return exitcodes.OK

    def render(self, settings: Settings, version: str) -> str:
        width = max(len(name) for name in settings.effective())
        lines = [f"event-processor {version} check", "settings (secrets masked):"]
        lines += [f"  {name:<{width}}  {value}" for name, value in settings.effective().items()]
        lines.append("checks:")
        label = max(len(outcome.name) for outcome in self.outcomes)
        lines += [
            f"  {outcome.status:<7} {outcome.name:<{label}}  {outcome.detail}"
            for outcome in self.outcomes
        ]
        failed = sum(outcome.status == FAILED for outcome in self.outcomes)
        if failed:
            lines.append(f"{failed} FAILED: `run` with these settings would exit {self.exit_code}")
        else:
            lines.append("all passed: `run` with these settings would start")
        return "\n".join(lines) + "\n"

    def as_json(self, settings: Settings, version: str) -> str:
        return orjson.dumps(
            {
                "version": version,
                "settings": settings.effective(),
                "checks": [
                    {"name": o.name, "status": o.status, "detail": o.detail} | _fields(o.error)
                    for o in self.outcomes
                ],
                "exit_code": self.exit_code,
            },
            option=orjson.OPT_INDENT_2,
        ).decode()


def _fields(error: StartupError | None) -> dict[str, str]:
    if error is None:
        return {}
    fields = error.fields()
    fields.pop("error")
    return fields


def spread_groups(settings: Settings, source_fifo: bool) -> str | None:
    """Why a FIFO source's group order will not show on the stream, if it will not: records
    keyed by submission spread a group over shards (docs/ordering.md)."""
    if not source_fifo or settings.partition_key is PartitionKey.DEVICE_ID:
        return None
    return (
        f"PARTITION_KEY={settings.partition_key.value} spreads each message group over "
        "shards: the daemon publishes a group in order, but the stream keeps order per "
        "submission only (PARTITION_KEY=device_id with groups by device keeps it per group)"
    )


def describe_queue(facts: QueueFacts) -> str:
    kind = "FIFO" if facts.fifo else "standard"
    return (
        f"{mask_url(facts.url)}: {kind}, MaximumMessageSize {facts.max_message_bytes}, "
        f"VisibilityTimeout {facts.visibility_timeout_s} s; {facts.visible} visible, "
        f"{facts.in_flight} in flight"
    )


async def check_all(
    settings: Settings,
    preflight: Preflight,
    *,
    registry: CollectorRegistry,
    key_set: Callable[[], Awaitable[int]] | None,
    out: TextIO,
    version: str,
    as_json: bool = False,
) -> int:
    """Every check `run` makes, each reported whether or not the one before passed; printed
    to `out`, and the exit code `run` would give."""
    report = Report()
    where = preflight.sqs_where

    async def region() -> tuple[str, str]:
        preflight.region()
        return OK, f"{where.region}, endpoint {where.endpoint}"

    source: QueueFacts | None = None

    async def source_queue() -> tuple[str, str]:
        nonlocal source
        source = await preflight.source_queue()
        spread = spread_groups(settings, source.fifo)
        if spread is not None:
            return WARN, f"{describe_queue(source)}; {spread}"
        return OK, describe_queue(source)

    async def stream() -> tuple[str, str]:
        facts = await preflight.stream()
        detail = f"{facts.name}: {facts.status}, {facts.open_shards} open shards"
        if facts.status in ("ACTIVE", "UPDATING"):
            return OK, detail
        return WARN, f"{detail} (PutRecords fails until it is ACTIVE)"

    async def dlq() -> tuple[str, str]:
        facts = await preflight.dead_letter_queue(source)
        assert facts is not None, "checked only with DLQ_URL set"
        status, note = _redrive_note(source, facts)
        return status, f"{describe_queue(facts)}; {note}"

    if await report.check("region", region):
        await report.check("source queue", source_queue)
        await report.check("stream", stream)
        if settings.dlq_url is None:
            report.add("DLQ", SKIPPED, "DLQ_URL is unset: rejections are only logged")
        else:
            await report.check("DLQ", dlq)
    if settings.metrics_port:
        host, port = settings.metrics_host, settings.metrics_port

        async def metrics() -> tuple[str, str]:
            await metrics_port_free(registry, host, port)
            return OK, f"{host}:{port} is free (bound, then released)"

        await report.check("metrics port", metrics)
    else:
        report.add("metrics port", SKIPPED, "METRICS_PORT is 0: no metrics server")
    if key_set is None or settings.auth_mode is AuthMode.OFF:
        report.add("key set", SKIPPED, "AUTH_MODE is off")
    else:
        resource = diagnosis.key_set_resource(settings)

        async def keys() -> tuple[str, str]:
            return OK, f"{resource}: valid, {await key_set()} keys"

        await report.check("key set", keys)
    print(
        report.as_json(settings, version) if as_json else report.render(settings, version),
        end="\n" if as_json else "",
        file=out,
    )
    return report.exit_code


def _redrive_note(source: QueueFacts | None, dlq: QueueFacts) -> tuple[str, str]:
    """Whether SQS's own redrive policy sends the source's messages here after too many
    receives (docs/deployment.md): not needed to start, but without it a message the daemon
    cannot finish comes back until it expires."""
    if source is None:
        return OK, "the source queue's RedrivePolicy is unknown"
    if source.redrive_target_arn is None:
        return (
            WARN,
            "the source queue has no RedrivePolicy: a message the daemon cannot "
            "finish is received again until it expires",
        )
    if source.redrive_target_arn != dlq.arn:
        return (
            WARN,
            f"the source queue's RedrivePolicy sends to {source.redrive_target_arn}, not here",
        )
    return (
        OK,
        f"the source queue's RedrivePolicy sends here after {source.max_receive_count} receives",
    )
