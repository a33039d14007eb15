"""The composition root: the only place that builds clients and wires the parts together."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from prometheus_client import CollectorRegistry

from event_processor import __version__, constants, diagnosis, exitcodes, http, signals
from event_processor.auth.authenticator import Authenticator, KeyStore
from event_processor.auth.keyset import FileKeySource, KeySetError, SecretsManagerKeySource
from event_processor.aws import botocore_models
from event_processor.aws.lean import LeanDlq, LeanKinesis, LeanSqs
from event_processor.config import AuthMode, mask_url
from event_processor.metrics import Metrics
from event_processor.pipeline.admission import Admission, MemoryBudget
from event_processor.pipeline.dead_letters import DeadLetterQueue
from event_processor.pipeline.sink import KinesisSink
from event_processor.pipeline.source import SqsSource
from event_processor.pipeline.submission import Pipeline
from event_processor.pipeline.worker import Worker
from event_processor.preflight import (
    Preflight,
    Resolved,
    check_all,
    read_key_set,
    spread_groups,
)
from event_processor.retry import RetryPolicy
from event_processor.status import Reporter

if TYPE_CHECKING:
    from typing import TextIO

    from aiobotocore.session import AioSession, ClientCreatorContext
    from types_aiobotocore_kinesis import KinesisClient
    from types_aiobotocore_secretsmanager import SecretsManagerClient
    from types_aiobotocore_sqs import SQSClient

    from event_processor.auth.keyset import KeySource
    from event_processor.aws.ports import DlqApi, KinesisApi, SqsApi
    from event_processor.config import Settings
    from event_processor.diagnosis import StartupError, Where

log = logging.getLogger(__name__)


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
        # re-validating each of them walks every PutRecords entry again.
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


async def _key_source(
    settings: Settings, session: AioSession, stack: AsyncExitStack
) -> tuple[KeySource, Where | None]:
    """The key set's source, as configured (Settings allows exactly one), and where its
    client calls (None for a file)."""
    if settings.auth_keys_file is not None:
        return FileKeySource(settings.auth_keys_file), None
    assert settings.auth_keys_secret_id is not None
    client = await stack.enter_async_context(secretsmanager_client(session, settings))
    source = SecretsManagerKeySource(client, settings.auth_keys_secret_id)
    return source, diagnosis.where_of(client, settings.endpoint_url)


def _key_set_words(settings: Settings, place: Where | None) -> Callable[[BaseException], str]:
    """An unreadable key set (`run` waits for it, not ready) in start-up's words."""
    resource = diagnosis.key_set_resource(settings)
    return lambda exc: str(diagnosis.key_set_unreadable(resource, exc, place))


def _pool(settings: Settings) -> int:
    # The pool must cover every PutRecords, receive and batch call in flight at once.
    return settings.max_put_requests + settings.receivers + 16


async def _preflight(
    settings: Settings, session: AioSession, stack: AsyncExitStack, policy: RetryPolicy
) -> Preflight:
    """The start-up checks over the daemon's own clients (entered on `stack`)."""
    sqs = await stack.enter_async_context(sqs_client(session, settings))
    kinesis = await stack.enter_async_context(kinesis_client(session, settings))
    # botocore's partitions (regions and their patterns): its endpoint rules loaded them
    # with the clients, so this is the loader's cached copy.
    partitions = session.get_data("partitions")
    return Preflight(settings, sqs, kinesis, policy, partitions)


def _startup_failed(error: StartupError) -> int:
    """Log why start-up failed (the message and its parts); the exit code it calls for."""
    log.error("start-up failed", extra={"action": "startup_failed", **error.fields()})
    return error.exit_code


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
    describe_key_error: Callable[[BaseException], str] = str,
) -> Parts:
    """Wire the parts around the three clients (and the key set's source, which AUTH_MODE
    monitor and enforce need): `run` does it with the AWS clients, and
    `devworld.bench.inprocess` with stand-ins, to measure our own code alone."""
    budget = MemoryBudget(settings.memory_budget_mb * 1024 * 1024, metrics.budget_used_bytes)
    metrics.budget_limit_bytes.set(budget.limit_bytes)
    admission = Admission(budget, resolved.max_message_bytes, metrics.budget_reserved_bytes)
    metrics.auth_mode.labels(settings.auth_mode.value).set(1)
    keys: KeyStore | None = None
    auth: Authenticator | None = None
    if settings.auth_mode is not AuthMode.OFF:
        assert key_source is not None, "Settings holds AUTH_MODE to a key set source"
        keys = KeyStore(
            key_source,
            metrics,
            policy,
            refresh_s=settings.auth_keys_refresh_seconds,
            describe=describe_key_error,
        )
        auth = Authenticator(settings.auth_mode, keys, metrics)
    source = SqsSource(
        sqs,
        resolved.queue_url,
        metrics,
        policy,
        wait_time_s=settings.wait_time_seconds,
        visibility_timeout_s=settings.visibility_timeout,
        fifo=resolved.fifo,
    )
    sink = KinesisSink(kinesis, settings.stream_name, metrics, policy, settings.max_put_requests)
    dead_letters = DeadLetterQueue(
        dlq, settings.dlq_url, metrics, policy, resolved.dlq_max_message_bytes, fifo=resolved.fifo
    )
    reporter = Reporter(metrics, settings.log_interval_seconds)
    pipeline = Pipeline(
        source,
        sink,
        dead_letters,
        metrics,
        admission=admission,
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
        admission=admission,
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


async def _read_key_set(
    keys: KeyStore, worker: Worker, settings: Settings, place: Where | None
) -> int | None:
    """Read the key set before anything is received (not ready meanwhile); an exit code if
    the daemon is not to run: the key set is invalid (2), or it was stopped first (0)."""
    try:
        loaded = await keys.load(worker.stop)
    except KeySetError as exc:
        return _startup_failed(
            diagnosis.key_set_invalid(diagnosis.key_set_resource(settings), str(exc), place)
        )
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
    botocore_models.use_on(session)  # the same models, read for a fraction of the start-up CPU
    async with AsyncExitStack() as stack:
        preflight = await _preflight(settings, session, stack, hooks.policy)
        sqs, kinesis = preflight.sqs, preflight.kinesis
        try:
            resolved = await preflight.resolve()
        except diagnosis.StartupError as exc:
            return _startup_failed(exc)

        queue_url = resolved.queue_url
        spread = spread_groups(settings, resolved.fifo)
        if spread is not None:
            log.warning(spread, extra={"action": "fifo_groups_spread"})
        # The hot calls' clients: the lean path in front of botocore's (docs/design.md).
        sqs_api: SqsApi = sqs
        kinesis_api: KinesisApi = kinesis
        dlq_api: DlqApi = sqs
        if settings.lean_aws_calls:
            # The credentials the clients were created with: the session resolved them once.
            credentials = await session.get_credentials()
            # An operation the lean path cannot be prepared for goes by the client's own path
            # (logged, and metrics.lean_path says which): slower, never a failed start.
            gauge = metrics.lean_path
            sqs_api = await LeanSqs.create(sqs, credentials, queue_url, gauge)
            kinesis_api = await LeanKinesis.create(
                kinesis, credentials, settings.stream_name, gauge
            )
            if settings.dlq_url is not None:
                dlq_api = await LeanDlq.create(sqs, credentials, settings.dlq_url, gauge)
        key_source, key_place = None, None
        if settings.auth_mode is not AuthMode.OFF:
            key_source, key_place = await _key_source(settings, session, stack)
        parts = assemble(
            settings,
            resolved,
            metrics,
            hooks.policy,
            sqs=sqs_api,
            kinesis=kinesis_api,
            dlq=dlq_api,
            key_source=key_source,
            describe_key_error=_key_set_words(settings, key_place),
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
                return _startup_failed(
                    diagnosis.metrics_port_taken(settings.metrics_host, settings.metrics_port, exc)
                )
            stack.push_async_callback(runner.cleanup)
        if hooks.install_signals:
            signals.install(worker.stop, worker.force)
            stack.callback(signals.uninstall)
        if hooks.on_started is not None:
            hooks.on_started(worker, metrics_port)
        if parts.keys is not None:
            code = await _read_key_set(parts.keys, worker, settings, key_place)
            if code is not None:
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
                # FIFO: each message group's submissions are published one after another.
                "source_kind": "fifo" if resolved.fifo else "standard",
                "version": __version__,
                "settings": settings.effective(),
            },
        )
        return await _run_worker(parts)


async def check(
    settings: Settings, out: TextIO, policy: RetryPolicy | None = None, *, as_json: bool = False
) -> int:
    """`event-processor check`: `run`'s start-up checks, each reported, through the clients
    `run` builds; nothing is received. The exit code is the one `run` would start with."""
    session = get_session()
    botocore_models.use_on(session)
    async with AsyncExitStack() as stack:
        preflight = await _preflight(settings, session, stack, policy or RetryPolicy())
        read_keys = None
        if settings.auth_mode is not AuthMode.OFF:
            source, place = await _key_source(settings, session, stack)
            resource = diagnosis.key_set_resource(settings)

            async def read_keys() -> int:
                return await read_key_set(source, resource, place)

        return await check_all(
            settings,
            preflight,
            registry=CollectorRegistry(),
            key_set=read_keys,
            out=out,
            version=__version__,
            as_json=as_json,
        )
