"""What the operator tools share: their settings (the daemon's), boto3 clients, and the queue
and stream look-ups they start with.

The tools are synchronous boto3: short-lived command-line tools, one call at a time. They read
the daemon's own `Settings` (AWS_REGION, QUEUE_URL, DLQ_URL, STREAM_NAME...), so a tool and the
daemon started with the same environment talk to the same queues.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Collection
from typing import Any, TextIO

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from event_processor import config, constants, diagnosis, exitcodes
from event_processor.config import Settings

Clock = Callable[[], float]


class ToolError(Exception):
    """A queue, stream or shard is missing or unreachable; the message says which."""


class UsageError(Exception):
    """A setting the tool needs is missing or contradictory; the message says how to fix it."""


class Exit(Exception):
    """End the command with `code`; what went wrong was said on stderr already."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


ToolRun = Callable[[argparse.Namespace, Settings, TextIO], int]
Handler = Callable[[argparse.Namespace, TextIO], int]


def tool_command(run: ToolRun) -> Handler:
    """A tool's handler: settings from env and flags, and the exit codes every tool shares.

    Bad or missing settings exit 2 (usage), a missing or unreachable queue or stream exits 3
    (as the daemon's failed start-up), each with one line on stderr; `Exit` ends with its code.
    """

    @functools.wraps(run)
    def handler(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
        try:
            return run(args, settings_of(args), out)
        except ValidationError as exc:
            print(config.explain(exc), file=sys.stderr)
            return exitcodes.USAGE
        except UsageError as exc:
            print(exc, file=sys.stderr)
            return exitcodes.USAGE
        except ToolError as exc:
            print(exc, file=sys.stderr)
            return exitcodes.STARTUP_FAILED
        except Exit as exc:
            return exc.code

    return handler


def dlq_url_of(settings: Settings) -> str:
    if settings.dlq_url is None:
        raise UsageError("no DLQ: pass --dlq-url or set DLQ_URL")
    return settings.dlq_url


def add_flags(
    parser: argparse._ActionsContainer,
    *names: str,
    required: Collection[str] = (),
    with_aws: bool = True,
) -> None:
    """Flags for these Settings fields (plus, `with_aws`, the endpoint and region), named and
    described as `run` names them (config.flag_help); a field in `required` is one the tool
    cannot do without."""
    for name in ("endpoint_url", "aws_region", *names) if with_aws else names:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=config.flag_metavar(name),
            help=config.flag_help(name, required=name in required),
        )


def settings_of(args: argparse.Namespace) -> Settings:
    """The daemon's Settings from the environment, with the flags `add_flags` added on top."""
    given = {
        name: value
        for name, value in vars(args).items()
        if name in Settings.model_fields and value is not None
    }
    return Settings(**given)


def client(settings: Settings, service: str) -> Any:
    """A boto3 client; with no endpoint URL, botocore reads AWS_ENDPOINT_URL(_SQS/_KINESIS)."""
    config = Config(
        region_name=settings.aws_region,
        # total_max_attempts counts the first call (max_attempts would count retries only).
        retries={"mode": "standard", "total_max_attempts": 3},
        connect_timeout=5,
        read_timeout=30,
    )
    # Imported here: `event-processor run` builds the tools' parsers but never a boto3 client.
    import boto3  # noqa: PLC0415

    return boto3.session.Session().client(
        service, endpoint_url=settings.endpoint_url, config=config
    )


def check_queue(sqs: Any, queue_url: str, what: str, settings: Settings | None = None) -> None:
    """That the queue exists and can be read; ToolError with the daemon's own words if not
    (`what`: "source queue" or "DLQ"; `settings` name the endpoint flag when given)."""
    if what == "DLQ":
        resource = diagnosis.dlq_resource(queue_url)
    else:
        resource = diagnosis.Resource(what, queue_url, ("queue_url",))
    place = diagnosis.where_of(sqs, None if settings is None else settings.endpoint_url)
    try:
        diagnosis.check_region(resource, place)
        sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    except (ClientError, BotoCoreError) as exc:
        raise ToolError(str(diagnosis.diagnose(exc, resource, place))) from exc
    except diagnosis.StartupError as exc:
        raise ToolError(str(exc)) from exc


def source_queue_url(sqs: Any, settings: Settings) -> str:
    """As the daemon resolves it (`diagnosis.SourceQueue`): QUEUE_URL wins, else QUEUE_NAME
    (GetQueueUrl)."""
    source = diagnosis.SourceQueue.of(settings)
    if source.url is not None:
        return source.url
    place = diagnosis.where_of(sqs, settings.endpoint_url)
    try:
        diagnosis.check_region(source.resource, place)
        return source.url_of(sqs.get_queue_url(**source.lookup))
    except (ClientError, BotoCoreError) as exc:
        raise ToolError(str(diagnosis.diagnose(exc, source.resource, place))) from exc
    except diagnosis.StartupError as exc:
        raise ToolError(str(exc)) from exc


def queue_counts(sqs: Any, queue_url: str) -> tuple[int, int]:
    """(ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible)."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes.get("ApproximateNumberOfMessages", 0)),
        int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
    )


def list_shard_ids(kinesis: Any, stream_name: str) -> list[str]:
    """Every shard id of the stream, following ListShards pagination."""
    page = kinesis.list_shards(StreamName=stream_name)
    shard_ids = [str(shard["ShardId"]) for shard in page["Shards"]]
    while page.get("NextToken"):
        page = kinesis.list_shards(NextToken=page["NextToken"])
        shard_ids.extend(str(shard["ShardId"]) for shard in page["Shards"])
    return shard_ids


def get_records(kinesis: Any, iterator: str) -> dict[str, Any]:
    """One GetRecords call, as many records as Kinesis returns in one."""
    return dict(
        kinesis.get_records(ShardIterator=iterator, Limit=constants.KINESIS_GET_RECORDS_MAX)
    )
