"""diagnosis: which region is known, where an endpoint came from, and what each failure says."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from event_processor import diagnosis, exitcodes
from event_processor.diagnosis import Resource, Where

PUBLIC = Where("eu-west-1", "AWS's public endpoint (https://sqs.eu-west-1.amazonaws.com)", False)
DLQ = Resource(
    "DLQ", "https://sqs.eu-west-1.amazonaws.com/123456789012/submissions-dlq", ("dlq_url",)
)


def client_error(code: str, message: str = "no") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "GetQueueAttributes")


@pytest.mark.parametrize(
    "region",
    ["eu-west-1", "us-gov-west-1", "cn-north-1", "eu-south-7", "ap-southeast-9", "aws-global"],
)
def test_a_listed_region_or_one_a_partition_admits_is_known(region: str) -> None:
    """Listed regions, and new ones of a partition's pattern (eu-south-7), are known."""
    assert diagnosis.region_is_known(region, diagnosis.load_partitions())


@pytest.mark.parametrize("region", ["xx-nowhere-9", "eu-west", "europe", "EU-WEST-1", ""])
def test_a_region_no_partition_could_hold_is_unknown(region: str) -> None:
    """A name outside every partition's list and pattern is unknown."""
    assert not diagnosis.region_is_known(region, diagnosis.load_partitions())


AWS_SQS = "https://sqs.eu-west-1.amazonaws.com"


@pytest.mark.parametrize(
    ("flag", "environ", "used", "shown"),
    [
        ("http://f:1", {"AWS_ENDPOINT_URL": "http://e:1"}, "http://f:1", "http://f:1 (--endpoint-url)"),
        (None, {"AWS_ENDPOINT_URL_SQS": "http://s:1", "AWS_ENDPOINT_URL": "http://e:1"},
         "http://s:1", "http://s:1 (AWS_ENDPOINT_URL_SQS)"),
        (None, {"AWS_ENDPOINT_URL": "http://e:1"}, "http://e:1", "http://e:1 (AWS_ENDPOINT_URL)"),
        (None, {}, "http://c:1", "http://c:1 (--endpoint-url or the AWS config file)"),
    ],
)  # fmt: skip
def test_where_names_the_endpoint_and_what_set_it(
    flag: str | None, environ: dict[str, str], used: str, shown: str
) -> None:
    """The flag first, then the service's variable, then AWS_ENDPOINT_URL, as botocore reads
    them: the endpoint is a custom one, and the region is not judged."""
    place = diagnosis.where("eu-west-1", used, "SQS", flag, environ)
    assert (place.endpoint, place.custom) == (shown, True)


@pytest.mark.parametrize(
    "environ",
    [{}, {"AWS_ENDPOINT_URL": "http://e:1", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}],
)
def test_without_an_endpoint_url_it_is_aws_public_one(environ: dict[str, str]) -> None:
    """No endpoint set (or botocore told to ignore them): AWS's own, for which the region
    is judged."""
    place = diagnosis.where("eu-west-1", AWS_SQS, "SQS", None, environ)
    assert (place.endpoint, place.custom) == (f"AWS's public endpoint ({AWS_SQS})", False)


def test_an_endpoint_password_is_masked_wherever_it_is_shown() -> None:
    """A password in the endpoint URL or in an error's text never reaches a message."""
    place = diagnosis.where("eu-west-1", "http://me:hunter2@h:1", "SQS", "http://me:hunter2@h:1")
    error = EndpointConnectionError(endpoint_url="http://me:hunter2@h:1/")
    message = str(diagnosis.diagnose(error, DLQ, place))
    assert "hunter2" not in message
    assert "http://me:****@h:1" in message


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (client_error("AWS.SimpleQueueService.NonExistentQueue"), "does not exist"),
        (client_error("AccessDenied", "not authorized"),
         "is not accessible: access denied (AccessDenied: not authorized)"),
        (client_error("InvalidClientTokenId"), "the AWS credentials were refused"),
        (NoCredentialsError(), "no AWS credentials were found"),
        (EndpointConnectionError(endpoint_url="https://x/"), "connecting to the endpoint failed"),
        (client_error("Throttling", "slow down"), "AWS answered Throttling: slow down"),
    ],
)  # fmt: skip
def test_each_failure_is_worded_for_what_it_is(error: Exception, says: str) -> None:
    """Missing, denied, refused credentials, none, unreachable, other: each its own words,
    all naming the resource, the setting, the region and the endpoint, and a fix."""
    message = str(diagnosis.diagnose(error, DLQ, PUBLIC))
    assert message.startswith(f"DLQ {DLQ.name} ")
    assert says in message
    assert "(DLQ_URL / --dlq-url; region eu-west-1; endpoint AWS's public endpoint" in message
    assert ". Fix: " in message


def test_access_denied_names_the_actions_the_resource_needs() -> None:
    """An access-denied fix lists the IAM actions of docs/deployment.md for that resource."""
    message = str(diagnosis.diagnose(client_error("AccessDenied"), DLQ, PUBLIC))
    assert "grant the daemon's role sqs:GetQueueAttributes and sqs:SendMessage" in message


def test_an_unknown_region_explains_any_failure_of_a_public_endpoint() -> None:
    """Whatever the call's error, a region no partition holds (no endpoint set) is the cause."""
    place = Where("xx-nowhere-9", "AWS's public endpoint (https://sqs.xx-nowhere-9...)", False)
    error = diagnosis.diagnose(EndpointConnectionError(endpoint_url="x"), DLQ, place)
    assert "region xx-nowhere-9 is an unknown region" in str(error)
    assert "AWS_REGION or AWS_DEFAULT_REGION / --aws-region" in str(error)


def test_fields_repeat_the_message_parts_for_a_log_line() -> None:
    """A structured log line gets the resource, setting, region and endpoint on their own."""
    error = diagnosis.diagnose(client_error("QueueDoesNotExist"), DLQ, PUBLIC)
    assert error.fields() == {
        "error": str(error),
        "resource": f"DLQ {DLQ.name}",
        "setting": "DLQ_URL / --dlq-url",
        "region": "eu-west-1",
        "endpoint": PUBLIC.endpoint,
    }
    assert error.exit_code == exitcodes.STARTUP_FAILED


def test_an_invalid_key_set_is_a_settings_error() -> None:
    """An invalid key set exits 2 (usage), as invalid settings do; a missing one 3."""
    keys = Resource("key set file", "/keys.json", ("auth_keys_file",))
    assert diagnosis.key_set_invalid(keys, "no keys", None).exit_code == exitcodes.USAGE
    missing = diagnosis.key_file_unreadable(keys, FileNotFoundError(2, "No such file"))
    assert missing.exit_code == exitcodes.STARTUP_FAILED
    assert str(missing).startswith("key set file /keys.json cannot be read: No such file")
