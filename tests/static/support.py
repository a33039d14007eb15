"""Helpers the static checks of the deploy files share: paths, tools run as subprocesses, YAML,
the daemon's AWS calls, a loopback HTTP server, checkov, the daemon's settings, the metric
names PromQL may select, the LocalStack init hook run through an `awslocal` shim (the
LocalStack tier runs it too), the Dockerfile's instructions and .dockerignore's rules, and the
Grafana dashboards' queries."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from event_processor.config import Settings
from event_processor.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
# The venv's bin dir (not resolved: sys.executable may be a symlink out of the venv).
BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
INIT_SCRIPT = ROOT / "localstack" / "ready.d" / "init-aws.sh"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
# The container's scratch directory (inside the pod or task, not on this machine).
CONTAINER_TMP = "/tmp"  # noqa: S108
# `make bench` (docs/deployment.md, "Where the numbers come from"): one daemon's peak RSS while draining.
BENCH_PEAK_RSS_MIB = 116
# What a linter, promtool, checkov or the init hook may take at most.
TOOL_TIMEOUT_S = 120
# CHECKOV overrides where checkov lives; see checkov().
CHECKOV_PIN = "checkov==3.3.30"


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion with its output captured, so a test can show it on failure;
    never hangs the suite (TOOL_TIMEOUT_S) and never raises on a non-zero exit."""
    return subprocess.run(
        args, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False, **kwargs
    )


def tool(name: str, package: str) -> str:
    """The path of a dev tool installed in this venv by a PyPI package; a missing one fails the
    test naming the package, rather than running whatever is on PATH."""
    path = BIN / name
    assert path.is_file(), f"{name} missing: it comes with the dev dependency {package}"
    return str(path)


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML file that must be a mapping (every config file checked here is one)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def image_user() -> str:
    """The user the image runs as (the Dockerfile's last USER), which the manifests must match."""
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert users, "the Dockerfile sets a USER"
    return str(users[-1])


def daemon_settings(
    env: Mapping[str, str], *, not_settings: Collection[str] = (), aliases: Collection[str] = ()
) -> Settings:
    """`env` (a deploy file's environment) parsed as the daemon's Settings.

    Every variable but `not_settings` (read by botocore and the like) must be a setting, named
    in the failure; `aliases` are accepted alternative names, dropped before validating.
    """
    settings = {k.lower(): v for k, v in env.items() if k not in not_settings}
    unknown = set(settings) - set(Settings.model_fields) - set(aliases)
    assert not unknown, f"not daemon settings: {sorted(unknown)}"
    for alias in aliases:
        settings.pop(alias, None)
    return Settings.model_validate(settings)


# --- the AWS calls the daemon makes, for its IAM grants -----------------------------------------

PACKAGE_DIR = ROOT / "event_processor"
# The daemon's modules that call AWS, and the service of the client each one holds as
# `self._client` (app.py and preflight.py name theirs `sqs` and `kinesis`, or `self.sqs`...).
CLIENT_MODULES = {
    "app.py": None,
    "preflight.py": None,
    "pipeline/source.py": "sqs",
    "pipeline/dead_letters.py": "sqs",
    "pipeline/sink.py": "kinesis",
    "auth/keyset.py": "secretsmanager",
    "pipeline/worker.py": None,
    "pipeline/submission.py": None,
    "pipeline/batcher.py": None,
}
AWS_CALL = re.compile(
    r"await\s+(?P<client>(?:self\.)?(?:sqs|kinesis)|self\._client)\.(?P<method>[a-z_]+)\("
)
# IAM authorises a batch call with the single call's action.
BATCH_ACTIONS = {
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sqs:SendMessageBatch": "sqs:SendMessage",
}


def daemon_aws_actions() -> set[str]:
    """The IAM actions the daemon's code needs: every awaited client call, by service."""
    actions: set[str] = set()
    for module, service in CLIENT_MODULES.items():
        source = (PACKAGE_DIR / module).read_text(encoding="utf-8")
        for match in AWS_CALL.finditer(source):
            client = match["client"]
            owner = service if client == "self._client" else client.removeprefix("self.")
            assert owner, f"{module} calls {match['method']} on a client of unknown service"
            operation = "".join(part.capitalize() for part in match["method"].split("_"))
            action = f"{owner}:{operation}"
            actions.add(BATCH_ACTIONS.get(action, action))
    return actions


# --- a loopback HTTP server, for the health checks ---------------------------------------------


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output free of access logs."""

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class Healthz(QuietHandler):
    """A daemon whose /healthz answers `status` (200: healthy); any other path is a 404."""

    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()


class Unhealthy(Healthz):
    """A daemon whose /healthz answers 503."""

    status = 503


@contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """`handler` served on a free loopback port (yielded) in a thread, so a health check command
    can be run against it; the server is shut down and joined on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- checkov ----------------------------------------------------------------------------------


def checkov() -> str:
    """checkov's executable: $CHECKOV, else the tools venv .venv-tools/, else this venv.

    checkov pins boto3==1.35.49 (so botocore<1.36) and packaging<24, which aiobotocore's
    botocore pin and this project's dev dependencies exclude: it lives in a venv of its own.
    """
    candidates = [os.environ.get("CHECKOV"), ROOT / ".venv-tools" / "bin" / "checkov"]
    candidates.append(BIN / "checkov")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail(
        f"checkov missing: install the PyPI package {CHECKOV_PIN} in its own venv "
        "(python3.11 -m venv .venv-tools && .venv-tools/bin/pip install "
        f"'{CHECKOV_PIN}'), or point $CHECKOV at a checkov executable"
    )


def checkov_json(config: Path, target: Path) -> Any:
    """checkov's parsed JSON report on `target`, a file or a directory of files, with `config`;
    exit 1 (findings) is a finished run too, the report says what was found."""
    scope, cwd = ("-d", target) if target.is_dir() else ("-f", target.parent)
    args = ["--config-file", str(config), scope, str(target), "--output", "json"]
    result = run([checkov(), *args, "--compact", "--skip-download"], cwd=cwd)
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(result.stdout)


def checkov_failures(report: dict[str, Any]) -> list[str]:
    """The failed checks of a report, one readable line each, for an assertion message."""
    return [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for c in report["results"]["failed_checks"]
    ]


def checkov_config_skips(config: Path) -> set[str]:
    """The check ids a checkov config file skips, each of which the docs must justify."""
    skips = load_yaml(config).get("skip-check") or []
    assert isinstance(skips, list)
    return {str(skip) for skip in skips}


# --- PromQL: the metric names an expression selects -------------------------------------------

_PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (alert rule or Grafana query): every
    identifier not a function call, keyword, label, number, duration or Grafana $variable."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    text = re.sub(r"(?<![\w.])(?:\d+(?:ms|[smhdwy]))+\b", " ", text)  # durations (offset 5m)
    text = re.sub(r"(?<![\w.])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)", " ", text)
    names: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        is_call = re.match(r"\s*\(", text[match.end() :]) is not None
        if not is_call and word.lower() not in _PROMQL_KEYWORDS:
            names.add(word)
    return names


def exported_metric_names() -> set[str]:
    """Every series name the daemon can export, labelled or not, from its own Metrics class:
    counters as <name>_total (and _created), histograms as _bucket/_sum/_count (and _created),
    gauges as their name; what a dashboard or rule may select."""
    registry = CollectorRegistry()
    Metrics(registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for family in registry.collect():
        assert family.type in suffixes, f"{family.name}: no rule for a {family.type}"
        # Families without samples yet (labelled metrics before their first .labels()) count too.
        names.update(family.name + suffix for suffix in suffixes[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def run_init_script(
    client_env: Mapping[str, str], awslocal_dir: Path, **settings: str
) -> subprocess.CompletedProcess[str]:
    """Run the LocalStack init hook with bash against the endpoint `client_env` names (an
    emulator's or LocalStack's), with `settings` as its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(client_env)
    env.update(
        {
            "PATH": f"{awslocal_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            # No profile or config file of this machine leaks in.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            **settings,
        }
    )
    return run(["bash", str(INIT_SCRIPT)], env=env, cwd=ROOT)


# --- the Dockerfile ------------------------------------------------------------------------


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


# --- the Grafana dashboards ----------------------------------------------------------------------


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
