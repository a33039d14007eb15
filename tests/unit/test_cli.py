"""Settings from env and flags; bad settings are a clear error with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from event_processor import cli
from event_processor.config import Settings
from event_processor.contract.records import PartitionKey


def test_defaults_match_the_documented_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without env or flags, the documented defaults apply."""
    for name in (
        "QUEUE_URL",
        "QUEUE_NAME",
        "STREAM_NAME",
        "DLQ_URL",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.queue_name, settings.stream_name, settings.dlq_url) == (
        "submissions",
        "events",
        None,
    )
    assert (settings.batch_size, settings.visibility_timeout, settings.wait_time_seconds) == (
        10,
        30,
        20,
    )
    assert (settings.metrics_port, settings.shutdown_grace_seconds) == (9100, 20.0)
    assert settings.partition_key is PartitionKey.DEVICE_ID
    assert settings.aws_region == "eu-west-1"


def test_env_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment variables set values; CLI flags override them."""
    monkeypatch.setenv("BATCH_SIZE", "5")
    monkeypatch.setenv("STREAM_NAME", "from-env")
    monkeypatch.setenv("AWS_REGION", "us-east-2")
    settings = cli.load_settings({"stream_name": "from-flag"})
    assert (settings.batch_size, settings.stream_name, settings.aws_region) == (
        5,
        "from-flag",
        "us-east-2",
    )


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--batch-size", "11"),
        ("--batch-size", "0"),
        ("--wait-time-seconds", "21"),
        ("--partition-key", "event_id"),
        ("--metrics-port", "70000"),
        ("--log-format", "xml"),
        ("--max-in-flight", "lots"),
    ],
)
def test_invalid_setting_exits_2_with_a_clear_message(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid setting stops start-up with exit code 2 and names the setting."""
    assert cli.main(["run", flag, value]) == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err
    assert flag.removeprefix("--") in err


def test_invalid_env_setting_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Environment values are validated the same way."""
    monkeypatch.setenv("VISIBILITY_TIMEOUT", "-3")
    assert cli.main(["run"]) == 2
    assert "VISIBILITY_TIMEOUT" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--auth-mode", "enforce"], "AUTH_MODE=enforce needs a key set"),
        (["--auth-mode", "monitor"], "AUTH_MODE=monitor needs a key set"),
        (["--auth-keys-secret-id", "s", "--auth-keys-file", "/k"], "both set"),
        (["--auth-mode", "strict"], "auth-mode"),
        (["--auth-keys-refresh-seconds", "0.5"], "auth-keys-refresh-seconds"),
    ],
)
def test_auth_settings_that_cannot_work_exit_2(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mode without a key set, two key set sources, an unknown mode: named, exit 2."""
    assert cli.main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert "invalid settings" in err
    assert words in err


def test_unknown_flag_is_a_usage_error() -> None:
    """argparse rejects unknown flags with exit code 2."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--no-such-flag", "1"])
    assert exit_.value.code == 2


def test_no_endpoint_variable_of_our_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint comes from the flag or from botocore's AWS_ENDPOINT_URL, never ENDPOINT_URL."""
    monkeypatch.setenv("ENDPOINT_URL", "http://invented:1")
    assert Settings().endpoint_url is None
    assert cli.load_settings({"endpoint_url": "http://flag:2"}).endpoint_url == "http://flag:2"


def test_run_imports_neither_the_dev_world_nor_the_tools_sdk() -> None:
    """`run` needs the daemon only: the demo's moto and rich, the fleet, and boto3 (the
    tools' SDK) stay out of its start-up, and the daemon's modules load only on `run`'s path."""
    probe = (
        "import sys\n"
        "import event_processor.cli\n"
        "before = set(sys.modules)\n"
        "from event_processor import app\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(roots & {'devworld', 'moto', 'rich', 'boto3', 'sensor_fleet'}))\n"
        "print('event_processor.app' in before, 'aiobotocore' in before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert out == ["[]", "False False"]


def test_effective_settings_are_plain_values_with_url_passwords_masked() -> None:
    """`check`'s effective settings are plain values, with a URL's password masked."""
    shown = Settings(
        endpoint_url="http://user:hunter2@localhost:4566",
        dlq_url="https://sqs.eu-west-1.amazonaws.com/1/dlq",
        auth_mode="monitor",
        auth_keys_file="/etc/keys.json",
    ).effective()
    assert shown["endpoint_url"] == "http://user:****@localhost:4566"
    assert shown["dlq_url"] == "https://sqs.eu-west-1.amazonaws.com/1/dlq"
    assert shown["auth_mode"] == "monitor"
    assert shown["auth_keys_file"] == "/etc/keys.json"
    assert set(shown) == set(Settings.model_fields)
    assert "hunter2" not in repr(shown)
