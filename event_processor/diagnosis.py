"""What is wrong when start-up fails: one owner for the messages of `run`, `check` and the tools.

Each message names the resource, the setting that pointed there (its env var and flag), the
region and endpoint in use, and the likely fix, in one family of words:
`source queue nope does not exist (QUEUE_NAME / --queue-name; region eu-west-1; endpoint ...).
Fix: ...`. No message holds a credential, a key or a URL's password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from event_processor import exitcodes
from event_processor.config import FLAG_ONLY, MASK, env_names, mask_url

if TYPE_CHECKING:
    from event_processor.config import Settings

# What to create when a resource does not exist.
_NOUNS: Final = {
    "source queue": "queue",
    "DLQ": "queue",
    "stream": "stream",
    "key set secret": "secret",
}
# Error codes, as botocore reports them (SQS's JSON protocol maps its codes back to the query
# protocol's: a missing queue is AWS.SimpleQueueService.NonExistentQueue).
MISSING_QUEUE: Final = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
MISSING_RESOURCE: Final = frozenset({"ResourceNotFoundException"})
ACCESS_DENIED: Final = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "KMSAccessDeniedException"}
)
BAD_CREDENTIALS: Final = frozenset(
    {
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
    }
)
# HTTPClientError: the HTTP client failed before any answer (DNS, TLS, a malformed endpoint).
UNREACHABLE: Final = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ConnectionClosedError,
    HTTPClientError,
)
# An error's own words (AWS's message, botocore's): cut, so that the message stays one line.
_QUOTED_CHARS: Final = 200
# The password of a URL's user part, wherever a URL appears in an error's text.
_URL_PASSWORD: Final = re.compile(r"(\w+://[^/\s:@]*:)[^@\s/]*@")
# Hosts of AWS's own endpoints (commercial, China, dual-stack): any other is one set by hand.
_PUBLIC_HOSTS: Final = re.compile(r"\.(amazonaws\.com|amazonaws\.com\.cn|api\.aws)$")
# The IAM actions each resource needs (docs/deployment.md, "IAM"), for an access-denied fix.
ACTIONS: Final = {
    "source queue": "sqs:GetQueueUrl, sqs:GetQueueAttributes, sqs:ReceiveMessage, "
    "sqs:DeleteMessage and sqs:ChangeMessageVisibility",
    "DLQ": "sqs:GetQueueAttributes and sqs:SendMessage",
    "stream": "kinesis:DescribeStreamSummary and kinesis:PutRecords",
    "key set secret": "secretsmanager:GetSecretValue (and kms:Decrypt for a customer-managed key)",
}


def setting_label(*names: str) -> str:
    """How a message names settings: `QUEUE_NAME / --queue-name`, as env var and flag."""
    labels = []
    for name in names:
        flag = "--" + name.replace("_", "-")
        labels.append(flag if name in FLAG_ONLY else f"{env_names(name)} / {flag}")
    return ", ".join(labels)


@dataclass(frozen=True)
class Where:
    """The region and endpoint a client calls, as a message shows them."""

    region: str
    endpoint: str  # the URL and where it came from, or "AWS's public endpoint (...)"
    custom: bool  # an endpoint URL was set (an emulator, LocalStack, a VPC endpoint)


def where(
    region: str,
    endpoint_url: str,
    service_id: str,
    flag_url: str | None,
    environ: Mapping[str, str] | None = None,
) -> Where:
    """`endpoint_url` is the one the client uses (botocore resolved it from the flag, its
    AWS_ENDPOINT_URL_<SERVICE> and AWS_ENDPOINT_URL variables or the config file); this says
    which of them set it, in botocore's order."""
    env = os.environ if environ is None else environ
    shown = mask_url(endpoint_url)
    service_env = "AWS_ENDPOINT_URL_" + service_id.upper().replace(" ", "_")
    if flag_url is not None:
        return Where(region, f"{shown} (--endpoint-url)", custom=True)
    ignored = env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true"
    for variable in (service_env, "AWS_ENDPOINT_URL"):
        if not ignored and env.get(variable):
            return Where(region, f"{shown} ({variable})", custom=True)
    host = endpoint_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    if _PUBLIC_HOSTS.search(host):
        return Where(region, f"AWS's public endpoint ({shown})", custom=False)
    # Not the flag's nor a variable's: the config file's (or a flag this caller did not pass).
    return Where(region, f"{shown} (--endpoint-url or the AWS config file)", custom=True)


def where_of(client: Any, flag_url: str | None) -> Where:
    """Where a botocore client (boto3's or aiobotocore's) sends its calls."""
    meta = client.meta
    return where(
        str(meta.region_name),
        str(meta.endpoint_url),
        str(meta.service_model.service_id),
        flag_url,
    )


def region_is_known(region: str, partitions: Mapping[str, Any]) -> bool:
    """A region botocore lists, or one its partitions' patterns admit (a region newer than
    this botocore still passes: only a name no partition could hold is refused)."""
    for partition in partitions.get("partitions", ()):
        if region in partition.get("regions", {}):
            return True
        pattern = partition.get("regionRegex")
        if pattern and re.match(pattern, region):
            return True
    return False


def load_partitions() -> Mapping[str, Any]:
    """botocore's partitions.json (a few KB): the regions and region patterns it knows."""
    from botocore.loaders import create_loader  # noqa: PLC0415 - only when a region is doubted

    data: Mapping[str, Any] = create_loader().load_data("partitions")
    return data


class StartupError(Exception):
    """The environment is not fit to run in; retrying in-process will not help. Its message
    names what is wrong, `fields` gives the same for a structured log line."""

    def __init__(
        self,
        resource: str,
        problem: str,
        fix: str,
        *,
        setting: str,
        where: Where | None = None,
        exit_code: int = exitcodes.STARTUP_FAILED,
    ) -> None:
        context = [setting]
        if where is not None:
            context += [f"region {where.region}", f"endpoint {where.endpoint}"]
        super().__init__(f"{resource} {problem} ({'; '.join(context)}). Fix: {fix}")
        self.resource = resource
        self.setting = setting
        self.where = where
        self.exit_code = exit_code

    def fields(self) -> dict[str, str]:
        """For `extra=`: the message's parts, to filter logs by."""
        fields = {"error": str(self), "resource": self.resource, "setting": self.setting}
        if self.where is not None:
            fields |= {"region": self.where.region, "endpoint": self.where.endpoint}
        return fields


@dataclass(frozen=True)
class Resource:
    """What a call was about: `kind` ("source queue", "DLQ", "stream", "key set secret"),
    its name or URL, and the settings that named it (Settings field names)."""

    kind: str
    name: str
    settings: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.kind} {mask_url(self.name)}"

    @property
    def setting(self) -> str:
        return setting_label(*self.settings)


@dataclass(frozen=True)
class SourceQueue:
    """The source queue as the settings name it, and how that becomes its URL: QUEUE_URL wins
    over QUEUE_NAME, which one GetQueueUrl call turns into the URL.

    The one resolution for `run`, `check` (`preflight.Preflight.source_queue`, async) and the
    tools (`tools.aws.source_queue_url`, sync boto3): a tool started with the daemon's settings
    reads the daemon's queue, and a failure names the setting that named the queue.
    """

    url: str | None  # QUEUE_URL; None: QUEUE_NAME is looked up
    name: str

    @classmethod
    def of(cls, settings: Settings) -> SourceQueue:
        return cls(settings.queue_url, settings.queue_name)

    @property
    def resource(self) -> Resource:
        if self.url is not None:
            return Resource("source queue", self.url, ("queue_url",))
        return Resource("source queue", self.name, ("queue_name",))

    @property
    def lookup(self) -> dict[str, str]:
        """GetQueueUrl's arguments, for a queue the settings name but do not locate."""
        return {"QueueName": self.name}

    @staticmethod
    def url_of(response: Mapping[str, Any]) -> str:
        """The URL in GetQueueUrl's response."""
        return str(response["QueueUrl"])


def dlq_resource(dlq_url: str) -> Resource:
    return Resource("DLQ", dlq_url, ("dlq_url",))


def stream_resource(settings: Settings) -> Resource:
    return Resource("stream", settings.stream_name, ("stream_name",))


def key_set_resource(settings: Settings) -> Resource:
    """The key set's source (Settings allows exactly one when AUTH_MODE is not off)."""
    if settings.auth_keys_file is not None:
        return Resource("key set file", str(settings.auth_keys_file), ("auth_keys_file",))
    return Resource("key set secret", str(settings.auth_keys_secret_id), ("auth_keys_secret_id",))


def unknown_region(resource: Resource, place: Where) -> StartupError:
    return StartupError(
        str(resource),
        f"cannot be reached: region {place.region} is an unknown region",
        "check the region's spelling (e.g. eu-west-1); for an emulator or LocalStack set "
        "AWS_ENDPOINT_URL or --endpoint-url",
        setting=setting_label(*resource.settings, "aws_region", "endpoint_url"),
        where=place,
    )


def region_problem(
    resource: Resource, place: Where, partitions: Mapping[str, Any] | None = None
) -> StartupError | None:
    """unknown_region when no endpoint URL is set and no partition knows the region: botocore
    would build a host name that does not exist, and the call would fail as unreachable."""
    if place.custom:
        return None
    if region_is_known(place.region, load_partitions() if partitions is None else partitions):
        return None
    return unknown_region(resource, place)


def check_region(
    resource: Resource, place: Where, partitions: Mapping[str, Any] | None = None
) -> None:
    """Before a call: raise region_problem's error, if any."""
    if (problem := region_problem(resource, place, partitions)) is not None:
        raise problem


def diagnose(
    exc: BaseException,
    resource: Resource,
    place: Where,
    partitions: Mapping[str, Any] | None = None,
) -> StartupError:
    """What a failed call on `resource` means for the operator."""
    if (problem := region_problem(resource, place, partitions)) is not None:
        return problem  # a region that does not exist explains any failure
    name = str(resource)
    setting = resource.setting
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        said = f"{code}: {quote(str(error.get('Message', '')))}".rstrip(": ")
        if code in MISSING_QUEUE | MISSING_RESOURCE:
            return StartupError(
                name,
                "does not exist",
                f"check {setting} and the region, or create the {_NOUNS.get(resource.kind, 'it')}",
                setting=setting,
                where=place,
            )
        if code in ACCESS_DENIED:
            actions = ACTIONS.get(resource.kind, "the calls the daemon makes on it")
            return StartupError(
                name,
                f"is not accessible: access denied ({said})",
                f"grant the daemon's role {actions} on it (docs/deployment.md, IAM)",
                setting=setting,
                where=place,
            )
        if code in BAD_CREDENTIALS:
            return StartupError(
                name,
                f"cannot be read: the AWS credentials were refused ({said})",
                "check the credentials in use (AWS_PROFILE, AWS_ACCESS_KEY_ID, the task's or "
                "pod's role) and that they belong to this region's partition; renew expired "
                "session credentials",
                setting=setting,
                where=place,
            )
        return StartupError(
            name,
            f"could not be checked: AWS answered {said}",
            "see AWS's answer above",
            setting=setting,
            where=place,
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StartupError(
            name,
            "cannot be reached: no AWS credentials were found",
            "give the task or pod a role (ECS task role, IRSA), or set AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            setting=setting,
            where=place,
        )
    if isinstance(exc, NoRegionError):
        return StartupError(
            name,
            "cannot be reached: no region is set",
            f"set {setting_label('aws_region')}",
            setting=setting,
            where=place,
        )
    if isinstance(exc, UNREACHABLE):
        how = "timed out" if isinstance(exc, ConnectTimeoutError) else "failed"
        return StartupError(
            name,
            f"cannot be reached: connecting to the endpoint {how} ({quote(str(exc))})",
            "check the endpoint URL (is the emulator or LocalStack running?), the network "
            "and the region",
            setting=setting,
            where=place,
        )
    return StartupError(
        name,
        f"could not be checked: {type(exc).__name__}: {quote(str(exc))}",
        "see the error above; `event-processor check` makes every check at once",
        setting=setting,
        where=place,
    )


def quote(text: str) -> str:
    """An error's text for a message: one line, cut, any URL's password masked."""
    line = _URL_PASSWORD.sub(rf"\1{MASK}@", " ".join(text.split()))
    return line if len(line) <= _QUOTED_CHARS else line[: _QUOTED_CHARS - 3] + "..."


def dlq_too_small(dlq: Resource, dlq_bytes: int, source_bytes: int, place: Where) -> StartupError:
    # A rejected submission goes to the DLQ with its original body: one the source accepts
    # must fit the DLQ, or every rejection reaching the DLQ cannot hold.
    return StartupError(
        str(dlq),
        f"accepts at most {dlq_bytes} bytes (MaximumMessageSize), below the source queue's "
        f"{source_bytes}: a rejected submission could not be dead-lettered",
        f"raise the DLQ's: aws sqs set-queue-attributes --queue-url {mask_url(dlq.name)} "
        f"--attributes MaximumMessageSize={source_bytes}",
        setting=dlq.setting,
        where=place,
    )


def dlq_kind_mismatch(dlq: Resource, source_fifo: bool, place: Where) -> StartupError:
    # SQS refuses a redrive policy between queues of different kinds, and our letters are
    # built for the DLQ's kind: a FIFO DLQ needs each letter's group and deduplication id.
    source_kind, dlq_kind = ("FIFO", "standard") if source_fifo else ("standard", "FIFO")
    return StartupError(
        str(dlq),
        f"is a {dlq_kind} queue but the source queue is {source_kind}: a {source_kind} "
        f"source needs a {source_kind} DLQ (SQS requires a queue's DLQ to be of its own kind)",
        f"point DLQ_URL at a {source_kind} queue "
        + ("(its name ends in .fifo)" if source_fifo else "(its name does not end in .fifo)"),
        setting=dlq.setting,
        where=place,
    )


def metrics_port_taken(host: str, port: int, exc: OSError) -> StartupError:
    reason = exc.strerror or type(exc).__name__
    return StartupError(
        f"metrics port {port} on {host}",
        f"cannot serve metrics: {reason}",
        "choose a free port (node_exporter also uses 9100), or 0 to serve no metrics",
        setting=setting_label("metrics_port", "metrics_host"),
    )


def key_set_invalid(resource: Resource, problem: str, place: Where | None) -> StartupError:
    """A key set that was read but is not valid: a settings error (exit 2), never quoted."""
    return StartupError(
        str(resource),
        f"is not a valid key set: {problem}",
        'correct the key set (docs/authentication.md, "The key set")',
        setting=resource.setting,
        where=place,
        exit_code=exitcodes.USAGE,
    )


def key_set_unreadable(resource: Resource, exc: BaseException, place: Where | None) -> StartupError:
    """A key set that could not be read (a file's OSError, a secret's AWS error)."""
    if isinstance(exc, OSError):
        return key_file_unreadable(resource, exc)
    if place is None:
        return StartupError(
            str(resource),
            f"cannot be read: {quote(str(exc))}",
            "see the error above",
            setting=resource.setting,
        )
    return diagnose(exc, resource, place)


def key_file_unreadable(resource: Resource, exc: OSError) -> StartupError:
    reason = exc.strerror or type(exc).__name__
    return StartupError(
        str(resource),
        f"cannot be read: {reason}",
        f"check {resource.setting} and that the file is mounted and readable by the daemon",
        setting=resource.setting,
    )
