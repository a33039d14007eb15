"""The composition root: the only place that builds clients and wires the parts together."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CollectorRegistry

from event_processor import __version__, awsmodels, constants, exitcodes, http, signals
from event_processor.auth import Authenticator, KeyStore
from event_processor.awsjson import LeanDlq, LeanKinesis, LeanSqs
from event_processor.budget import MemoryBudget
from event_processor.config import AuthMode, mask_url
from event_processor.dlq import DeadLetterQueue
from event_processor.keyset import FileKeySource, KeySetError, SecretsManagerKeySource
from event_processor.metrics import Metrics
from event_processor.pipeline import Pipeline
from event_processor.retry import RetryPolicy
from event_processor.sink import KinesisSink
from event_processor.source import SqsSource
from event_processor.status import Reporter
from event_processor.worker import Worker

if TYPE_CHECKING:
    from aiobotocore.session import AioSession, ClientCreatorContext
    from types_aiobotocore_kinesis import KinesisClient
    from types_aiobotocore_secretsmanager import SecretsManagerClient
    from types_aiobotocore_sqs import SQSClient

    from event_processor.awsjson import DlqApi, KinesisApi, SqsApi
    from event_processor.config import Settings
    from event_processor.keyset import KeySource

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The queue or stream is missing or unreachable: retrying in-process will not help."""


@dataclass
class Hooks:
    """What tests observe of a running daemon; production passes the defaults."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    install_signals: bool = True
    # Called with (worker, metrics_port) once started, before the key set is read (when
    # AUTH_MODE needs one): tests use it to stop and probe; `worker.ready` says it receives.
    on_started: Callable[[Worker, int], None] | None = None


def client_config(settings: Settings) -> AioConfig:
    """The SQS client's: botocore's standard mode owns transport retries (throttles, 5xx,
    connection resets); every SQS call we make is safe to repeat."""
    return AioConfig(
        region_name=settings.aws_region,
        retries={"mode": "standard", "total_max_attempts": 3},
        max_pool_connections=_pool(settings),
        connect_timeout=5,
        # A long poll holds the connection for WAIT_TIME_SECONDS; leave it room.
        read_timeout=settings.wait_time_seconds + 10,
        # Our requests are built by typed code (mypy-checked against the service stubs);
        # re-validating every PutRecords entry costs ~7% of the daemon's CPU.
        parameter_validation=False,
    )


def kinesis_config(settings: Settings) -> AioConfig:
    """The Kinesis client's: one attempt per call, and a read timeout of its own.

    PutRecords is not idempotent: a call that timed out may have landed, and a transport
    retry would send it again at once, into the slowness that caused the timeout. The sink
    owns every resend instead, after a backoff and through its congestion window (which
    counts time-outs and slow calls as congestion).
    """
    return AioConfig(
        region_name=settings.aws_region,
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=_pool(settings),
        connect_timeout=5,
        read_timeout=constants.PUT_RECORDS_READ_TIMEOUT_S,
        parameter_validation=False,
    )


def sqs_client(session: AioSession, settings: Settings) -> ClientCreatorContext[SQSClient]:
    """The daemon's SQS client (`client_config`), to enter as a context."""
    return session.create_client(
        "sqs", config=client_config(settings), endpoint_url=settings.endpoint_url
    )


def kinesis_client(session: AioSession, settings: Settings) -> ClientCreatorContext[KinesisClient]:
    """The daemon's Kinesis client (`kinesis_config`), to enter as a context."""
    return session.create_client(
        "kinesis", config=kinesis_config(settings), endpoint_url=settings.endpoint_url
    )


def secretsmanager_client(
    session: AioSession, settings: Settings
) -> ClientCreatorContext[SecretsManagerClient]:
    """The key set's client: a read every few minutes, so botocore's own retries are enough."""
    config = AioConfig(
        region_name=settings.aws_region,
        retries={"mode": "standard", "total_max_attempts": 3},
        connect_timeout=5,
        read_timeout=10,
    )
    return session.create_client(
        "secretsmanager", config=config, endpoint_url=settings.endpoint_url
    )


async def _key_source(settings: Settings, session: AioSession, stack: AsyncExitStack) -> KeySource:
    """The key set's source, as configured (Settings allows exactly one)."""
    if settings.auth_keys_file is not None:
        return FileKeySource(settings.auth_keys_file)
    assert settings.auth_keys_secret_id is not None
    client = await stack.enter_async_context(secretsmanager_client(session, settings))
    return SecretsManagerKeySource(client, settings.auth_keys_secret_id)


def _pool(settings: Settings) -> int:
    # The pool must cover every PutRecords, receive and batch call in flight at once.
    return settings.max_put_requests + settings.receivers + 16


@dataclass(frozen=True)
class Resolved:
    queue_url: str
    max_message_bytes: int  # the source queue's MaximumMessageSize
    dlq_max_message_bytes: int  # the DLQ's (packed letters are cut to fit it)


async def _max_message_bytes(sqs: SQSClient, queue_url: str) -> int:
    attributes = (
        await sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn", "MaximumMessageSize"]
        )
    ).get("Attributes", {})
    size = int(attributes.get("MaximumMessageSize", constants.SQS_MAX_MESSAGE_BYTES))
    return min(max(size, constants.SQS_MIN_MESSAGE_BYTES), constants.SQS_MAX_MESSAGE_BYTES)


async def _resolve(
    settings: Settings, sqs: SQSClient, kinesis: KinesisClient, policy: RetryPolicy
) -> Resolved:
    try:
        queue_url = settings.queue_url
        if queue_url is None:
            queue_url = (await sqs.get_queue_url(QueueName=settings.queue_name))["QueueUrl"]
        max_message_bytes = await _max_message_bytes(sqs, queue_url)
        # The Kinesis client makes one attempt per call (kinesis_config): retry this one here
        # as botocore would, so a blip at start-up is not reported as a missing stream.
        async for attempt in policy.with_limits(
            3, constants.STARTUP_DESCRIBE_DEADLINE_S
        ).retrying():
            with attempt:
                await kinesis.describe_stream_summary(StreamName=settings.stream_name)
        dlq_max = max_message_bytes
        if settings.dlq_url is not None:
            dlq_max = await _max_message_bytes(sqs, settings.dlq_url)
    except (BotoCoreError, ClientError) as exc:
        raise StartupError(str(exc)) from exc
    if dlq_max < max_message_bytes:
        # A rejected submission goes to the DLQ with its original body: one the source
        # accepts must fit the DLQ, or rule 4 (every rejection reaches the DLQ) cannot hold.
        raise StartupError(
            f"the DLQ's MaximumMessageSize ({dlq_max}) is below the source queue's "
            f"({max_message_bytes}): a rejected submission could not be dead-lettered; "
            "raise the DLQ's (sqs set-queue-attributes ... MaximumMessageSize)"
        )
    return Resolved(queue_url, max_message_bytes, dlq_max)


@dataclass(frozen=True)
class Parts:
    """The daemon's parts, wired; `source` and `dlq` are to be closed after the worker,
    `keys` (None with AUTH_MODE=off) is to be loaded before it runs, and `reporter` gives
    the `stopped` line its totals."""

    source: SqsSource
    dlq: DeadLetterQueue
    worker: Worker
    keys: KeyStore | None
    reporter: Reporter


def assemble(
    settings: Settings,
    resolved: Resolved,
    metrics: Metrics,
    policy: RetryPolicy,
    *,
    sqs: SqsApi,
    kinesis: KinesisApi,
    dlq: DlqApi,
    key_source: KeySource | None = None,
) -> Parts:
    """Wire the parts around the three clients (and the key set's source, which AUTH_MODE
    monitor and enforce need): `run` does it with the AWS clients, and
    `devworld.bench.inprocess` with stand-ins, to measure our own code alone."""
    budget = MemoryBudget(settings.memory_budget_mb * 1024 * 1024, metrics.budget_used_bytes)
    metrics.budget_limit_bytes.set(budget.limit_bytes)
    metrics.auth_mode.labels(settings.auth_mode.value).set(1)
    keys: KeyStore | None = None
    auth: Authenticator | None = None
    if settings.auth_mode is not AuthMode.OFF:
        assert key_source is not None, "Settings holds AUTH_MODE to a key set source"
        keys = KeyStore(key_source, metrics, policy, refresh_s=settings.auth_keys_refresh_seconds)
        auth = Authenticator(settings.auth_mode, keys, metrics)
    source = SqsSource(
        sqs,
        resolved.queue_url,
        metrics,
        policy,
        wait_time_s=settings.wait_time_seconds,
        visibility_timeout_s=settings.visibility_timeout,
    )
    sink = KinesisSink(kinesis, settings.stream_name, metrics, policy, settings.max_put_requests)
    dead_letters = DeadLetterQueue(
        dlq, settings.dlq_url, metrics, policy, resolved.dlq_max_message_bytes
    )
    reporter = Reporter(metrics, settings.log_interval_seconds)
    pipeline = Pipeline(
        source,
        sink,
        dead_letters,
        metrics,
        budget=budget,
        partition_key=settings.partition_key,
        auth=auth,
        rejections=reporter.rejections,
    )
    worker = Worker(
        source,
        sink,
        pipeline,
        metrics,
        policy,
        budget=budget,
        max_message_bytes=resolved.max_message_bytes,
        receivers=settings.receivers,
        batch_size=settings.batch_size,
        max_in_flight=settings.max_in_flight,
        shutdown_grace_s=settings.shutdown_grace_seconds,
        side_tasks=(
            reporter.report_rejections,
            reporter.report_status,
            *(() if keys is None else (keys.run,)),
        ),
    )
    return Parts(source, dead_letters, worker, keys, reporter)


async def _read_key_set(keys: KeyStore, worker: Worker) -> int | None:
    """Read the key set before anything is received (not ready meanwhile); an exit code if
    the daemon is not to run: the key set is invalid (2), or it was stopped first (0)."""
    try:
        loaded = await keys.load(worker.stop)
    except KeySetError as exc:
        log.error(  # noqa: TRY400 - the key set's problem is the whole story
            "invalid key set", extra={"action": "startup_failed", "error": str(exc)}
        )
        return exitcodes.USAGE
    if not loaded:
        log.info("stopped before the key set was read", extra={"action": "stopped"})
        return exitcodes.OK
    return None


async def _run_worker(parts: Parts) -> int:
    """Run the worker until it has stopped and drained; log the totals and how it ended."""
    try:
        await parts.worker.run()
    except Exception:
        parts.reporter.flush()
        log.exception("worker crashed", extra={"action": "crashed", **parts.reporter.totals()})
        return exitcodes.FAILED
    parts.reporter.flush()
    drained = parts.worker.drained
    # A second signal cut the drain short: say so to the shell and the orchestrator, as the
    # tools do (the unfinished messages were released for redelivery all the same).
    code = exitcodes.INTERRUPTED if drained.forced else exitcodes.OK
    log.info(
        "stopped",
        extra={
            "action": "stopped",
            "exit_code": code,
            "forced": drained.forced,
            "grace_expired": drained.grace_expired,
            "unfinished": drained.unfinished,
            "released": drained.released,
            **parts.reporter.totals(),
        },
    )
    return code


async def run(settings: Settings, hooks: Hooks | None = None) -> int:
    """Start, run until a signal (or hooks' stop event), drain, and return the exit code."""
    hooks = hooks or Hooks()
    metrics = Metrics(hooks.registry)
    session = get_session()
    awsmodels.use_on(session)  # the same models, read for a fraction of the start-up CPU
    async with AsyncExitStack() as stack:
        sqs = await stack.enter_async_context(sqs_client(session, settings))
        kinesis = await stack.enter_async_context(kinesis_client(session, settings))
        try:
            resolved = await _resolve(settings, sqs, kinesis, hooks.policy)
        except StartupError as exc:
            log.error("start-up failed", extra={"action": "startup_failed", "error": str(exc)})  # noqa: TRY400
            return exitcodes.STARTUP_FAILED

        queue_url = resolved.queue_url
        # The hot calls' clients: the lean path in front of botocore's (README, "Performance").
        sqs_api: SqsApi = sqs
        kinesis_api: KinesisApi = kinesis
        dlq_api: DlqApi = sqs
        if settings.lean_aws_calls:
            # The credentials the clients were created with: the session resolved them once.
            credentials = await session.get_credentials()
            sqs_api = await LeanSqs.create(sqs, credentials, queue_url)
            kinesis_api = await LeanKinesis.create(kinesis, credentials, settings.stream_name)
            if settings.dlq_url is not None:
                dlq_api = await LeanDlq.create(sqs, credentials, settings.dlq_url)
        key_source = None
        if settings.auth_mode is not AuthMode.OFF:
            key_source = await _key_source(settings, session, stack)
        parts = assemble(
            settings,
            resolved,
            metrics,
            hooks.policy,
            sqs=sqs_api,
            kinesis=kinesis_api,
            dlq=dlq_api,
            key_source=key_source,
        )
        # Closed in reverse: the DLQ's sends, then the source's deletes.
        stack.push_async_callback(parts.source.close)
        stack.push_async_callback(parts.dlq.close)
        worker = parts.worker

        metrics_port = 0
        if settings.metrics_port:
            try:
                runner, metrics_port = await http.serve(
                    http.make_app(hooks.registry, lambda: worker.ready),
                    settings.metrics_host,
                    settings.metrics_port,
                )
            except OSError as exc:  # the port is taken (node_exporter also likes 9100)
                log.error(  # noqa: TRY400 - the OS's reason is the whole story
                    "start-up failed: cannot serve metrics",
                    extra={
                        "action": "startup_failed",
                        "error": str(exc),
                        "metrics_port": settings.metrics_port,
                    },
                )
                return exitcodes.STARTUP_FAILED
            stack.push_async_callback(runner.cleanup)
        if hooks.install_signals:
            signals.install(worker.stop, worker.force)
            stack.callback(signals.uninstall)
        if hooks.on_started is not None:
            hooks.on_started(worker, metrics_port)
        if parts.keys is not None and (code := await _read_key_set(parts.keys, worker)) is not None:
            return code
        log.info(
            "event processor running",
            extra={
                "action": "running",
                "queue_url": mask_url(queue_url),
                "stream": settings.stream_name,
                "dlq_url": None if settings.dlq_url is None else mask_url(settings.dlq_url),
                "metrics_port": metrics_port,
                "auth_mode": settings.auth_mode.value,
                "version": __version__,
                "settings": settings.effective(),
            },
        )
        return await _run_worker(parts)
