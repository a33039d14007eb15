"""The embedded AWS emulator: moto's threaded server, made thread-safe, for tests, demo and bench.

Owns starting/stopping the server, building (and deleting) a queue + DLQ + stream "world", the
sensors' key set secret, and reading a stream.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypedDict, Unpack

import boto3
from botocore.config import Config

from event_processor.tools.aws import get_records, list_shard_ids, queue_counts
from event_processor.tools.keys import new_entry, new_key_id

log = logging.getLogger(__name__)

# Dummy credentials: moto accepts anything, botocore just needs something to sign with.
DUMMY_ACCESS_KEY_ID = "testing"
DUMMY_SECRET_ACCESS_KEY = "testing"  # noqa: S105 - not a secret: moto ignores it

# The local world's key set secret: the demo's, and the LocalStack init hook's default
# (AUTH_KEYS_SECRET_NAME in docker-compose.yaml), so that a demo against that LocalStack signs
# with the key set the compose fleet and daemon use.
KEY_SET_SECRET_NAME = "event-processor/sensor-keys"  # noqa: S105 - a name, not a secret

# How long create_world waits for the stream to become ACTIVE, and how often it looks.
_STREAM_ACTIVE_TIMEOUT_S = 30.0
_STREAM_ACTIVE_POLL_S = 0.05
# A long poll re-scans at least this often: visibility expiries wake nobody.
_LONG_POLL_SLICE_S = 1.0
# Re-scan interval while visible messages exist that we may not take (a FIFO group in flight).
_BLOCKED_POLL_S = 0.05

_PATCH_LOCK = threading.Lock()
_PATCHED = threading.Event()
# One lock for every mutating SQS backend call: moto's queues are plain lists and sets.
_SQS_LOCK = threading.RLock()
# One lock for Kinesis shard reads and writes: a shard's records are a plain OrderedDict.
_KINESIS_LOCK = threading.Lock()


# A receive's scan reads the clock once per message: `_one_instant` makes it read one instant,
# so that a message cannot turn visible between two looks at it (see _unlock_timed_out_groups).
_INSTANT = threading.local()


@contextlib.contextmanager
def _one_instant() -> Iterator[None]:
    _INSTANT.now = time.time()
    try:
        yield
    finally:
        _INSTANT.now = None


def _now() -> float:
    frozen: float | None = getattr(_INSTANT, "now", None)
    return time.time() if frozen is None else frozen


def _fast_unix_time(dt: Any = None) -> float:
    """moto.core.utils.unix_time without the naive-datetime detour when asked for "now"."""
    if dt is None:
        return _now()
    from moto.core.utils import unix_time  # noqa: PLC0415 - moto is imported only when patching

    return float(unix_time(dt))


def _fast_unix_time_millis(dt: Any = None) -> float:
    """moto.core.utils.unix_time_millis, same units (float milliseconds), via time.time()."""
    if dt is None:
        return _now() * 1000.0
    from moto.core.utils import unix_time_millis  # noqa: PLC0415

    return float(unix_time_millis(dt))


def _locked(lock: threading.Lock | threading.RLock, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `fn` so that every call runs under `lock`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return fn(*args, **kwargs)

    return wrapper


def _wait_for_visible(queue: Any, timeout: float) -> None:
    """Block (outside the SQS lock) until the queue may have a message for us, or `timeout`."""
    if queue.messages:
        # Visible but not deliverable (FIFO group in flight): nobody will notify, so pause briefly.
        with queue._messages_lock:
            queue._messages_lock.wait(min(timeout, _BLOCKED_POLL_S))
    else:
        # Woken by Queue.add_message's notify_all; the predicate is checked under the Condition.
        queue.wait_for_messages(timeout)


def patch_moto() -> None:
    """Make moto's SQS and Kinesis backends thread-safe (and faster). Idempotent."""
    with _PATCH_LOCK:
        if _PATCHED.is_set():
            return
        _patch_sqs()
        _patch_kinesis()
        _PATCHED.set()
        log.debug("moto patched: SQS and Kinesis backends serialised")


def _patch_sqs() -> None:
    from moto.sqs import models as sqs_models  # noqa: PLC0415

    backend_cls: Any = sqs_models.SQSBackend
    queue_cls: Any = sqs_models.Queue

    # Queue.delete_message rebuilds _messages: concurrent deletes/appends are lost without a lock.
    for name in ("add_message", "delete_message"):
        setattr(queue_cls, name, _locked(_SQS_LOCK, getattr(queue_cls, name)))
    # Sends, deletes, visibility changes and purges mutate shared lists/sets: serialise them all.
    # The attribute calls join in so ApproximateNumberOf* counts come from one consistent state.
    for name in (
        "send_message",
        "send_message_batch",
        "delete_message",
        "delete_message_batch",
        "change_message_visibility",
        "change_message_visibility_batch",
        "purge_queue",
        "get_queue_attributes",
        "set_queue_attributes",
    ):
        setattr(backend_cls, name, _locked(_SQS_LOCK, getattr(backend_cls, name)))

    original_receive = backend_cls.receive_message

    # Concurrent receives hand out the same message: scan under the lock, long-poll outside it.
    @functools.wraps(original_receive)
    def receive_message(  # noqa: PLR0917 - moto's own signature
        self: Any,
        queue_name: str,
        count: int,
        wait_seconds_timeout: int,
        visibility_timeout: int,
        message_attribute_names: list[str] | None = None,
    ) -> list[Any]:
        deadline = time.monotonic() + wait_seconds_timeout
        while True:
            with _SQS_LOCK, _one_instant():
                _unlock_timed_out_groups(self.get_queue(queue_name))
                result: list[Any] = original_receive(
                    self, queue_name, count, 0, visibility_timeout, message_attribute_names
                )
                queue = self.get_queue(queue_name)
            remaining = deadline - time.monotonic()
            if result or remaining <= 0:
                return result
            _wait_for_visible(queue, min(_LONG_POLL_SLICE_S, remaining))

    backend_cls.receive_message = receive_message

    # The original builds every queue attribute (O(queue depth)) per received message.
    def is_message_valid_based_on_retention_period(
        self: Any, queue_name: str, message: Any
    ) -> bool:
        retention_period = self.get_queue(queue_name).message_retention_period
        retain_until = retention_period + message.sent_timestamp / 1000
        return bool(retain_until > _fast_unix_time())

    backend_cls.is_message_valid_based_on_retention_period = (
        is_message_valid_based_on_retention_period
    )

    # A message made visible with VisibilityTimeout=0 is visible at once in SQS. moto asks
    # `now > visible_at`, and time.time() repeats itself within a few hundred nanoseconds, so a
    # release often left the message in the queue's pending set: on a FIFO queue its group then
    # stayed locked and its later messages came out ahead of it (the test suite's redrive-order
    # flake on CI). Visible from the very instant its hold ends:
    message_cls: Any = sqs_models.Message
    message_cls.visible = property(lambda self: _fast_unix_time_millis() >= self.visible_at)

    # moto's clock goes through naive datetimes (~10 us per visibility check): use time.time().
    module: Any = sqs_models
    module.unix_time = _fast_unix_time
    module.unix_time_millis = _fast_unix_time_millis


_DISPATCH_PATCHED = threading.Event()


def _unlock_timed_out_groups(queue: Any) -> None:
    """Forget the received messages whose visibility ran out, before a receive scans.

    moto locks a FIFO group while a message of it is in its pending set, and takes a message
    out of that set only when its scan reaches it visible again. Several messages of a group
    timing out together (a consumer killed with a group in flight) then unlock the group at
    the last of them: the scan skipped the earlier ones and handed out the later ones first.
    SQS locks a group while a message of it is in flight, and hands the group out again from
    its first message.
    """
    if not queue.fifo_queue:
        return
    pending = queue.pending_messages
    timed_out = [message for message in pending if message.visible]
    pending.difference_update(timed_out)


def patch_moto_dispatch() -> None:
    """Find each request's backend without moto's per-request scans (~20% of a small request's
    CPU). Idempotent; the test suite's emulators use it.

    moto's server lists its own package directory (a stat per module, ~200) for every request,
    then tries every backend's URL pattern on the host; both answers are fixed for a host.
    patch_moto leaves this out: `make bench`'s figures were measured with moto's own dispatch,
    and a cheaper emulator would leave the daemon more of the machine's CPU.
    """
    with _PATCH_LOCK:
        if not _DISPATCH_PATCHED.is_set():
            _patch_dispatch()
            _DISPATCH_PATCHED.set()


def _patch_dispatch() -> None:
    from moto import backends  # noqa: PLC0415
    from moto.moto_server import werkzeug_app  # noqa: PLC0415

    modules = tuple(backends.list_of_moto_modules())
    module: Any = backends
    module.list_of_moto_modules = lambda: modules

    dispatcher_cls: Any = werkzeug_app.DomainDispatcherApplication
    original = dispatcher_cls.get_backend_for_host
    # The answer depends on the host and moto's URL index only. Called under the dispatcher's
    # own lock (get_application holds it), as the original is.
    found: dict[str | None, Any] = {}

    @functools.wraps(original)
    def get_backend_for_host(self: Any, host: str | None) -> Any:
        if host not in found:
            found[host] = original(self, host)
        return found[host]

    dispatcher_cls.get_backend_for_host = get_backend_for_host


def _patch_kinesis() -> None:
    from moto.kinesis import models as kinesis_models  # noqa: PLC0415

    shard_cls: Any = kinesis_models.Shard
    record_cls: Any = kinesis_models.Record

    # Concurrent PutRecords read the same last sequence number and overwrite each other's records;
    # next(reversed(...)) replaces get_max_sequence_number's O(n) list(keys)[-1], same value.
    def put_record(self: Any, partition_key: str, data: str, explicit_hash_key: str) -> str:
        with _KINESIS_LOCK:
            last_sequence_number = next(reversed(self.records)) if self.records else 0
            sequence_number = last_sequence_number + 1
            self.records[sequence_number] = record_cls(
                partition_key, data, sequence_number, explicit_hash_key
            )
        return str(sequence_number)

    shard_cls.put_record = put_record
    # GetRecords iterates the OrderedDict in Python: a concurrent put raises "mutated during
    # iteration" without the lock.
    shard_cls.get_records = _locked(_KINESIS_LOCK, shard_cls.get_records)


@dataclass(frozen=True)
class World:
    """The AWS resources the daemon works on, as created by Emulator.create_world."""

    endpoint_url: str
    region: str
    queue_url: str
    dlq_url: str
    stream_name: str
    fifo: bool = False  # FIFO queue and FIFO DLQ (names end in ".fifo", as SQS requires)


class WorldOptions(TypedDict, total=False):
    """create_world's options; their defaults are create_world's own, and only there."""

    queue_name: str
    dlq_name: str
    stream_name: str
    shard_count: int
    max_receive_count: int
    visibility_timeout_s: int
    fifo: bool


class Emulator:
    """moto's ThreadedMotoServer, in-process, on a free port, with patch_moto() applied.

    moto's state is process-global: start() resets it, so run one Emulator per process at a time.
    """

    def __init__(self, region: str = "eu-west-1", host: str = "127.0.0.1", port: int = 0) -> None:
        self.region = region
        self._host = host
        self._port = port
        self._server: Any = None
        self._endpoint_url: str | None = None
        # Clients for create_world/delete_world: building one costs tens of milliseconds, and
        # a test suite makes a world per test. boto3's clients are thread-safe; sessions not.
        self._clients: dict[str, Any] = {}
        # The session boto3_client builds every client from, one at a time (_session_lock): a
        # session of its own per client reloads botocore's endpoint rules and service model,
        # ~0.17 s of CPU where a shared one (whose loader caches them) takes ~0.01 s.
        self._session: boto3.session.Session | None = None
        self._session_lock = threading.Lock()

    def start(self) -> None:
        """Start the server (no-op if already started) on a fresh, empty moto state.

        Raises OSError if the port asked for is taken.
        """
        if self._server is not None:
            return
        if self._port:
            # moto binds in its server thread: on a taken port that thread dies and its
            # start() waits for it forever. Bind here first (as werkzeug does, reusing
            # TIME_WAIT) so that start() fails instead.
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((self._host, self._port))
        patch_moto()
        from moto.server import ThreadedMotoServer  # noqa: PLC0415 - heavy import, only when used

        werkzeug_log = logging.getLogger("werkzeug")
        if werkzeug_log.level == logging.NOTSET:
            # The server's werkzeug logs every request at INFO; keep only its warnings.
            werkzeug_log.setLevel(logging.WARNING)

        server = ThreadedMotoServer(ip_address=self._host, port=self._port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self._endpoint_url = f"http://{host}:{port}"
        self.reset()
        log.info("AWS emulator listening on %s", self._endpoint_url)

    def stop(self) -> None:
        """Stop the server; safe to call when not started."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        log.info("AWS emulator on %s stopped", self._endpoint_url)
        self._endpoint_url = None
        self._clients.clear()  # a restart listens on another port

    @property
    def started(self) -> bool:
        """True between start() and stop()."""
        return self._server is not None

    def reset(self) -> None:
        """Drop every queue, stream and message in moto (all emulators in this process share it)."""
        # The URL is always http://<our host>:<our port>, never a user-supplied scheme.
        url = f"{self.endpoint_url}/moto-api/reset"
        request = urllib.request.Request(url, method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()

    @property
    def endpoint_url(self) -> str:
        """The server's URL, e.g. http://127.0.0.1:54321."""
        if self._endpoint_url is None:
            raise RuntimeError("emulator is not started")
        return self._endpoint_url

    def client_env(self) -> dict[str, str]:
        """Environment variables that point a subprocess's AWS SDK at this emulator."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
        }

    def boto3_client(self, service: str, *, config: Config | None = None) -> Any:
        """A new boto3 client for `service` on the emulator, with its own connections; any
        thread may call (clients are built one at a time from one session)."""
        with self._session_lock:
            if self._session is None:
                self._session = boto3.session.Session(
                    aws_access_key_id=DUMMY_ACCESS_KEY_ID,
                    aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
                    region_name=self.region,
                )
            return self._session.client(service, endpoint_url=self.endpoint_url, config=config)

    def _client(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = self.boto3_client(service)
        return client

    def create_world(self, **options: Unpack[WorldOptions]) -> World:
        """Create the DLQ, the queue redriving to it, and an ACTIVE stream (create_world)."""
        return create_world(self._client("sqs"), self._client("kinesis"), **options)

    def delete_world(self, world: World) -> None:
        """Delete what create_world made; a no-op once the emulator is stopped (nothing is left
        to reach, and the next start() resets moto's state anyway)."""
        if not self.started:
            return
        delete_world(self._client("sqs"), self._client("kinesis"), world)

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def create_world(
    sqs: Any,
    kinesis: Any,
    *,
    queue_name: str = "submissions",
    dlq_name: str = "submissions-dlq",
    stream_name: str = "events",
    shard_count: int = 2,
    max_receive_count: int = 5,
    visibility_timeout_s: int = 30,
    fifo: bool = False,
) -> World:
    """Create (or find) the DLQ, the queue redriving to it, and an ACTIVE stream.

    `fifo`: both queues FIFO (SQS requires a FIFO queue's DLQ to be FIFO), their names given
    the ".fifo" suffix SQS requires, without content-based deduplication: every sender
    (the sensors, the daemon's letters, redrive) gives its own MessageDeduplicationId.

    Idempotent, so that it also serves an existing LocalStack: CreateQueue returns the
    queue that exists, and an existing stream is used as it is. For the same reason a
    failure part-way leaves what was made: CreateQueue does not tell a queue it made from
    one that was there, and deleting a user's queue is worse than leaving a test's behind
    (a second call with the same names finishes the job).
    """
    kind: dict[str, str] = {}
    if fifo:
        queue_name, dlq_name = _fifo_name(queue_name), _fifo_name(dlq_name)
        kind = {"FifoQueue": "true", "ContentBasedDeduplication": "false"}
    dlq_url: str = sqs.create_queue(QueueName=dlq_name, Attributes=kind)["QueueUrl"]
    dlq_arn: str = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    redrive_policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}
    attributes = {
        "RedrivePolicy": json.dumps(redrive_policy),
        "VisibilityTimeout": str(visibility_timeout_s),
        **kind,
    }
    try:
        queue_url: str = sqs.create_queue(QueueName=queue_name, Attributes=attributes)["QueueUrl"]
    except sqs.exceptions.QueueNameExists:
        # Created before with other attributes (e.g. by the LocalStack init hook): keep it.
        queue_url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]

    # Already there (a LocalStack that has run before): use it as it is.
    with contextlib.suppress(kinesis.exceptions.ResourceInUseException):
        kinesis.create_stream(StreamName=stream_name, ShardCount=shard_count)
    _wait_stream_active(kinesis, stream_name)

    return World(
        endpoint_url=str(sqs.meta.endpoint_url),
        region=str(sqs.meta.region_name),
        queue_url=queue_url,
        dlq_url=dlq_url,
        stream_name=stream_name,
        fifo=fifo,
    )


def _fifo_name(name: str) -> str:
    return name if name.endswith(".fifo") else f"{name}.fifo"


def create_key_set_secret(secretsmanager: Any, name: str = KEY_SET_SECRET_NAME) -> bool:
    """Create the Secrets Manager secret `name` holding a new key set (one fresh master key),
    unless it exists: then it is kept as it is (a LocalStack whose init hook made it, an earlier
    demo). True if it was created. Nothing of the key is returned or logged: read the set as
    the daemon does (event_processor.tools.keys.read_key_set)."""
    key_set = {"keys": new_entry(new_key_id()), "revoked_devices": []}
    try:
        secretsmanager.create_secret(Name=name, SecretString=json.dumps(key_set))
    except secretsmanager.exceptions.ResourceExistsException:
        return False
    return True


def delete_world(sqs: Any, kinesis: Any, world: World) -> None:
    """Delete the queue, the DLQ and the stream of `world`; what is already gone is skipped.

    The queue goes before the DLQ it redrives to. A reset emulator (Emulator.start, another
    test's Emulator) may have dropped any of them already.
    """
    for queue_url in (world.queue_url, world.dlq_url):
        with contextlib.suppress(sqs.exceptions.QueueDoesNotExist):
            sqs.delete_queue(QueueUrl=queue_url)
    with contextlib.suppress(kinesis.exceptions.ResourceNotFoundException):
        kinesis.delete_stream(StreamName=world.stream_name, EnforceConsumerDeletion=True)


def _wait_stream_active(kinesis: Any, stream_name: str) -> None:
    """Poll DescribeStreamSummary until the stream is ACTIVE or the deadline passes."""
    deadline = time.monotonic() + _STREAM_ACTIVE_TIMEOUT_S
    while True:
        summary = kinesis.describe_stream_summary(StreamName=stream_name)
        status = summary["StreamDescriptionSummary"]["StreamStatus"]
        if status == "ACTIVE":
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"stream {stream_name} still {status} after {_STREAM_ACTIVE_TIMEOUT_S:g} s"
            )
        time.sleep(_STREAM_ACTIVE_POLL_S)


def read_stream(client: Any, stream_name: str) -> list[dict[str, Any]]:
    """Every record of every shard from TRIM_HORIZON, in shard order then sequence order.

    Each record is {"shard_id", "sequence_number", "partition_key", "data": bytes}.
    """
    records: list[dict[str, Any]] = []
    for shard_id in sorted(list_shard_ids(client, stream_name)):
        iterator: str | None = client.get_shard_iterator(
            StreamName=stream_name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        shard_records: list[dict[str, Any]] = []
        while iterator:
            page = get_records(client, iterator)
            shard_records.extend(
                {
                    "shard_id": shard_id,
                    "sequence_number": record["SequenceNumber"],
                    "partition_key": record["PartitionKey"],
                    "data": record["Data"],
                }
                for record in page["Records"]
            )
            # Stop on an empty page at the tip: moto reports MillisBehindLatest == 0 for a full
            # page whose records share the last millisecond, so 0 alone does not mean "done".
            if not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
            iterator = page.get("NextShardIterator")
        # moto's sequence numbers are small integers as strings; int() also orders AWS's.
        shard_records.sort(key=lambda record: int(record["sequence_number"]))
        records.extend(shard_records)
    return records


def free_port() -> int:
    """A loopback port free right now (METRICS_PORT=0 means "disabled", not "any")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def queue_depth(sqs: Any, queue_url: str) -> int:
    """Visible plus in-flight messages: 0 means every message was deleted."""
    return sum(queue_counts(sqs, queue_url))
