"""docker-compose.yaml, checked without a Docker engine: the Compose Specification schema, then
cross-checks with the Dockerfile, the init hook, Prometheus, Grafana and its dashboards, and the
daemon's metrics and settings.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest

from devworld.emulator import KEY_SET_SECRET_NAME
from devworld.localstack_host import compose_service
from event_processor.config import AuthMode
from tests.static.support import (
    DASHBOARD_DIR,
    GRAFANA_DIR,
    INIT_SCRIPT,
    PROMETHEUS_CONFIG,
    ROOT,
    QuietHandler,
    daemon_settings,
    dashboard_exprs,
    dashboard_files,
    dashboard_panels,
    exported_metric_names,
    load_yaml,
    promql_metric_names,
    run,
    serve_http,
    tool,
)

COMPOSE_FILE = ROOT / "docker-compose.yaml"

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
