"""Settings: one pydantic-settings model, read from the environment and overridden by CLI flags.

Endpoints are botocore's business: AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_SQS / _KINESIS) are
read by botocore itself, so the per-service variants keep working. `--endpoint-url` overrides
them all, as it does in the AWS CLI.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from event_processor import constants
from event_processor.contract.records import PartitionKey


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class AuthMode(StrEnum):
    """AUTH_MODE (docs/authentication.md): whether sensors' signatures are checked."""

    OFF = "off"
    MONITOR = "monitor"  # verified and counted; published as if off
    ENFORCE = "enforce"  # a submission without a valid signature goes whole to the DLQ


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class Group(StrEnum):
    """The sections of `run --help`, in this order. Every setting names its own in its Field
    (`_shown`), so one added without a section is caught by the help tests."""

    AWS = "AWS"
    SOURCE = "source"
    SINK = "sink"
    LIMITS = "limits"
    AUTH = "authentication"
    OBSERVABILITY = "observability"


GROUP_TITLES = {
    Group.AWS: "AWS: the endpoint, the region and how calls are made",
    Group.SOURCE: "source: the SQS queue submissions come from",
    Group.SINK: "sink: the Kinesis stream events go to, and the dead-letter queue",
    Group.LIMITS: "limits: backpressure, memory and shutdown",
    Group.AUTH: "authentication: sensors' signatures (docs/authentication.md)",
    Group.OBSERVABILITY: "observability: metrics, probes and logs",
}


def _shown(group: Group, metavar: str | None = None) -> JsonDict:
    """A Field's json_schema_extra: its --help section and placeholder (choices and ranges come
    from its type and constraints). Only --help reads them; validation ignores them."""
    extra: JsonDict = {"group": group.value}
    if metavar is not None:
        extra["metavar"] = metavar
    return extra


# Settings that come from flags (or code) only. endpoint_url's environment variables are
# botocore's own (AWS_ENDPOINT_URL and the per-service ones); reading an ENDPOINT_URL of
# our own would invent a setting that AWS tooling does not know.
FLAG_ONLY = frozenset({"endpoint_url"})


class _EnvSource(EnvSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in FLAG_ONLY:
            return None, field_name, False
        return super().get_field_value(field, field_name)


class Settings(BaseSettings):
    """Every knob of the daemon. Field descriptions become the CLI's --help."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (init) win over the environment; no .env file or secrets directory.
        return init_settings, _EnvSource(settings_cls)

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="forbid", frozen=True, use_enum_values=False
    )

    endpoint_url: Annotated[
        str | None,
        Field(
            description="AWS endpoint for every service, over botocore's own variables "
            "(AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_SQS, ..._KINESIS); unset: real AWS",
            json_schema_extra=_shown(Group.AWS, "URL"),
        ),
    ] = None
    aws_region: Annotated[
        str,
        Field(
            description="AWS region",
            validation_alias=AliasChoices("aws_region", "aws_default_region"),
            json_schema_extra=_shown(Group.AWS, "REGION"),
        ),
    ] = "eu-west-1"
    queue_url: Annotated[
        str | None,
        Field(
            description="source queue URL (wins over the name)",
            json_schema_extra=_shown(Group.SOURCE, "URL"),
        ),
    ] = None
    queue_name: Annotated[
        str,
        Field(
            min_length=1,
            description="source queue name, resolved at start-up",
            json_schema_extra=_shown(Group.SOURCE, "NAME"),
        ),
    ] = "submissions"
    stream_name: Annotated[
        str,
        Field(
            min_length=1,
            description="target Kinesis stream",
            json_schema_extra=_shown(Group.SINK, "NAME"),
        ),
    ] = "events"
    dlq_url: Annotated[
        str | None,
        Field(
            description="dead-letter queue URL; unset: rejections are only logged",
            json_schema_extra=_shown(Group.SINK, "URL"),
        ),
    ] = None
    batch_size: Annotated[
        int,
        Field(
            ge=1,
            le=constants.SQS_MAX_BATCH_ENTRIES,
            description="messages per receive",
            json_schema_extra=_shown(Group.SOURCE, "N"),
        ),
    ] = 10
    visibility_timeout: Annotated[
        int,
        Field(
            ge=2,
            le=constants.SQS_MAX_VISIBILITY_S,
            description="seconds a received message stays hidden from other receivers; extended "
            "while it is in flight",
            json_schema_extra=_shown(Group.SOURCE, "SECONDS"),
        ),
    ] = 30
    wait_time_seconds: Annotated[
        int,
        Field(
            ge=0,
            le=constants.SQS_MAX_WAIT_TIME_S,
            description="seconds a receive waits for messages to arrive: the long poll",
            json_schema_extra=_shown(Group.SOURCE, "SECONDS"),
        ),
    ] = 20
    receivers: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="concurrent long-polling receivers",
            json_schema_extra=_shown(Group.SOURCE, "N"),
        ),
    ] = 4
    max_in_flight: Annotated[
        int,
        Field(
            ge=1,
            le=100_000,
            description="bound on submissions in flight (backpressure)",
            json_schema_extra=_shown(Group.LIMITS, "N"),
        ),
    ] = 1000
    memory_budget_mb: Annotated[
        int,
        Field(
            ge=8,
            le=1_000_000,
            description="MiB that in-flight submissions may hold (bodies, packed events, dead "
            "letters); receiving pauses beyond it, and the default fits a 256 MiB pod",
            json_schema_extra=_shown(Group.LIMITS, "MIB"),
        ),
    ] = 48
    max_put_requests: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="PutRecords requests in flight at once",
            json_schema_extra=_shown(Group.SINK, "N"),
        ),
    ] = 8
    partition_key: Annotated[
        PartitionKey,
        Field(
            description="what a record's partition key is (a submission's events share one)",
            json_schema_extra=_shown(Group.SINK),
        ),
    ] = PartitionKey.DEVICE_ID
    metrics_port: Annotated[
        int,
        Field(
            ge=0,
            le=65535,
            description="port of /metrics, /healthz and /readyz; 0 disables them",
            json_schema_extra=_shown(Group.OBSERVABILITY, "PORT"),
        ),
    ] = 9100
    metrics_host: Annotated[
        str,
        Field(
            description="address the metrics server binds",
            json_schema_extra=_shown(Group.OBSERVABILITY, "HOST"),
        ),
    ] = "0.0.0.0"
    shutdown_grace_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=3600,
            description="time to finish in-flight work on SIGTERM",
            json_schema_extra=_shown(Group.LIMITS, "SECONDS"),
        ),
    ] = 20.0
    lean_aws_calls: Annotated[
        bool,
        Field(
            description="send ReceiveMessage, DeleteMessageBatch, PutRecords and the DLQ's "
            "SendMessageBatch on the lean request path (botocore's credentials, signer, HTTP "
            "session and retries; docs/design.md); false: every call through botocore's "
            "client",
            json_schema_extra=_shown(Group.AWS),
        ),
    ] = True
    auth_mode: Annotated[
        AuthMode,
        Field(
            description="sensor signatures: off, monitor (verify and count, publish as off) or "
            "enforce (reject to the DLQ); monitor and enforce need a key set",
            json_schema_extra=_shown(Group.AUTH),
        ),
    ] = AuthMode.OFF
    auth_keys_secret_id: Annotated[
        str | None,
        Field(
            min_length=1,
            description="Secrets Manager secret (name or ARN) holding the key set",
            json_schema_extra=_shown(Group.AUTH, "SECRET_ID"),
        ),
    ] = None
    auth_keys_file: Annotated[
        Path | None,
        Field(
            description="file holding the key set, e.g. a mounted Kubernetes Secret",
            json_schema_extra=_shown(Group.AUTH, "PATH"),
        ),
    ] = None
    auth_keys_refresh_seconds: Annotated[
        float,
        Field(
            ge=1,
            le=86_400,
            description="seconds between reads of the key set",
            json_schema_extra=_shown(Group.AUTH, "SECONDS"),
        ),
    ] = 300.0
    log_interval_seconds: Annotated[
        float,
        Field(
            ge=1,
            le=3600,
            description="seconds between status lines, and the least time between two "
            "rejection summaries (the first rejection after a quiet interval is logged at once)",
            json_schema_extra=_shown(Group.OBSERVABILITY, "SECONDS"),
        ),
    ] = 60.0
    log_level: Annotated[
        LogLevel,
        Field(
            description="least severe level logged",
            json_schema_extra=_shown(Group.OBSERVABILITY),
        ),
    ] = LogLevel.INFO
    log_format: Annotated[
        LogFormat,
        Field(
            description="text, or json (one object a line)",
            json_schema_extra=_shown(Group.OBSERVABILITY),
        ),
    ] = LogFormat.TEXT

    @model_validator(mode="after")
    def _one_key_source(self) -> Settings:
        if self.auth_keys_secret_id is not None and self.auth_keys_file is not None:
            raise ValueError(
                "AUTH_KEYS_SECRET_ID and AUTH_KEYS_FILE are both set: the key set has one source"
            )
        if self.auth_mode is not AuthMode.OFF and not self.has_key_source:
            raise ValueError(
                f"AUTH_MODE={self.auth_mode.value} needs a key set: set AUTH_KEYS_SECRET_ID"
                " (Secrets Manager) or AUTH_KEYS_FILE"
            )
        return self

    @property
    def has_key_source(self) -> bool:
        return self.auth_keys_secret_id is not None or self.auth_keys_file is not None

    def effective(self) -> dict[str, str | int | float | bool | None]:
        """Every setting as resolved, for the start line and `check`: plain values, secrets
        masked. No setting is a secret itself (the key set's secret id names it; credentials
        are botocore's), but a URL may carry a password in its user part."""
        shown: dict[str, str | int | float | bool | None] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, StrEnum):
                value = value.value
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, str):
                value = mask_url(value)
            shown[name] = value
        return shown


MASK = "****"


def mask_url(text: str) -> str:
    """`text` with the password of a URL's user part replaced by MASK (other text unchanged)."""
    if "@" not in text or "://" not in text:
        return text
    parts = urlsplit(text)
    if parts.password is None:
        return text
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def env_names(name: str) -> str:
    """The environment variables a setting is read from, for --help."""
    if name in FLAG_ONLY:
        return "none: botocore reads its own AWS_ENDPOINT_URL*"
    alias = Settings.model_fields[name].validation_alias
    choices = getattr(alias, "choices", None)
    names = [str(c) for c in choices] if choices else [name]
    return " or ".join(n.upper() for n in names)


def group_of(name: str) -> Group | None:
    """The --help section a setting names in its Field (None: it names none, a test's catch)."""
    extra = Settings.model_fields[name].json_schema_extra
    group = extra.get("group") if isinstance(extra, dict) else None
    return Group(group) if isinstance(group, str) else None


def _choices(name: str) -> list[str] | None:
    """The values an enum or bool setting takes, as they are written in flags and variables."""
    annotation = Settings.model_fields[name].annotation
    if annotation is bool:
        return ["true", "false"]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(member.value) for member in annotation]
    return None


def flag_metavar(name: str) -> str:
    """A flag's placeholder: its choices, else its Field's metavar (URL, N, SECONDS...)."""
    choices = _choices(name)
    if choices is not None:
        return "{" + ",".join(choices) + "}"
    extra = Settings.model_fields[name].json_schema_extra
    metavar = extra.get("metavar") if isinstance(extra, dict) else None
    return metavar if isinstance(metavar, str) else "VALUE"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def value_range(name: str) -> str | None:
    """A numeric setting's bounds from its Field constraints, e.g. "1-10" or ">= 1"."""
    low: float | None = None
    high: float | None = None
    # pydantic keeps ge/le as annotated_types.Ge/Le objects, each with the one attribute.
    for constraint in Settings.model_fields[name].metadata:
        low = getattr(constraint, "ge", low)
        high = getattr(constraint, "le", high)
    if low is not None and high is not None:
        return f"{_number(low)}-{_number(high)}"
    if low is not None:
        return f">= {_number(low)}"
    if high is not None:
        return f"<= {_number(high)}"
    return None


def shown_default(name: str) -> str | None:
    """A setting's default as written in a flag or variable; None when it is unset."""
    default = Settings.model_fields[name].default
    if default is None:
        return None
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, Enum):
        return str(default.value)
    if isinstance(default, float):
        return _number(default)
    return str(default)


def flag_help(name: str, *, required: bool = False) -> str:
    """A setting's --help line: what it is, its range, its variables and its default, e.g.
    "messages per receive (1-10) [env BATCH_SIZE; default 10]".

    `required`: a tool cannot do without it (and says how to fix its absence), so the
    description's "; unset: ..." tail, what the daemon does without it, is dropped.
    """
    text = str(Settings.model_fields[name].description)
    if required:
        text = text.partition(";")[0]
    if (bounds := value_range(name)) is not None:
        text += f" ({bounds})"
    where = f"env {env_names(name)}"
    if required:
        where += "; required"
    elif (default := shown_default(name)) is not None:
        where += f"; default {default}"
    return f"{text} [{where}]"


def explain(error: ValidationError) -> str:
    """Every bad setting, one a line, named as its variable and its flag."""
    lines = ["invalid settings:"]
    for problem in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in problem["loc"])
        if not where:  # a rule across settings: its message names them
            lines.append(f"  {problem['msg'].removeprefix('Value error, ')}")
            continue
        lines.append(f"  {where.upper()} (--{where.replace('_', '-')}): {problem['msg']}")
    return "\n".join(lines)
