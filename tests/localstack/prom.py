"""Debian's `prometheus` for the tier: deploy/prometheus/prometheus.yml pointed at a local daemon,
its HTTP API, and Grafana's template variables turned into PromQL."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from devworld.emulator import free_port
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
# Short, so that a load of a minute or two gives each rate() window several samples.
SCRAPE_INTERVAL_S = 1
START_TIMEOUT_S = 60.0


class QueryError(Exception):
    """Prometheus answered a query with an error (bad PromQL, or an evaluation error)."""


def local_config(target: str) -> dict[str, Any]:
    """prometheus.yml with the daemon at `target`, a short interval and its rule files by path."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    interval = f"{SCRAPE_INTERVAL_S}s"
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    # Relative to prometheus.yml, as the compose service mounts them beside it.
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config.get("rule_files", [])]
    (job,) = config["scrape_configs"]
    for static in job["static_configs"]:
        static["targets"] = [target]
    return config


def grafana_to_promql(expr: str, *, step_s: int, range_s: int) -> str:
    """A dashboard query as Grafana sends it, for a panel of `range_s` seconds at `step_s`."""
    # Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval).
    rate_interval_s = max(step_s + SCRAPE_INTERVAL_S, 4 * SCRAPE_INTERVAL_S)
    values = {  # longest names first: $__range_s must not become "<range>_s"
        "$__rate_interval_ms": str(rate_interval_s * 1000),
        "$__rate_interval": f"{rate_interval_s}s",
        "$__interval_ms": str(step_s * 1000),
        "$__interval": f"{step_s}s",
        "$__range_ms": str(range_s * 1000),
        "$__range_s": str(range_s),
        "$__range": f"{range_s}s",
    }
    for name, value in values.items():
        expr = expr.replace(name, value)
    left = re.findall(r"\$\{?\w+", expr)
    if left:
        raise ValueError(f"template variables with no value here: {left} in {expr!r}")
    return expr


class Prometheus:
    """`prometheus` on a free loopback port with local_config(), storage in `directory`."""

    def __init__(self, directory: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        assert binary, "no `prometheus` binary: apt-get install prometheus (make tools does)"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(local_config(target)), encoding="utf-8")
        self._log = (directory / "prometheus.log").open("wb")
        self._process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = directory / "prometheus.log"
        try:
            wait_for(self._ready, START_TIMEOUT_S, "prometheus ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        assert self._process.poll() is None, self.log_path.read_text()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                return False
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:  # noqa: S310
                return bool(response.status == 200)
        except urllib.error.URLError:
            return False

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait(timeout=60)
        self._log.close()

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; its `data`, or QueryError with Prometheus's own message."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - our URL
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422: bad query or evaluation error
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        if body.get("warnings"):
            raise QueryError(f"warnings: {body['warnings']}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        data = self.api("query", **params)
        return list(data["result"]) if data["resultType"] in {"vector", "matrix"} else [data]

    def query_range(self, expr: str, start: float, end: float, step_s: int) -> list[dict[str, Any]]:
        data = self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step_s}s"
        )
        return list(data["result"])

    def last_scrape(self) -> float:
        """When the daemon was last scraped (unix time), 0 before the first scrape."""
        result = self.query("max(timestamp(up))")
        return float(result[0]["value"][1]) if result else 0.0

    def wait_scraped_after(self, moment: float, timeout_s: float = 30.0) -> None:
        """Poll until a scrape newer than `moment` is stored."""
        wait_for(lambda: self.last_scrape() > moment, timeout_s, "a scrape after the load")

    def wait_target_up(self, timeout_s: float = 30.0) -> None:
        def up() -> bool:
            targets = self.api("targets")["activeTargets"]
            return bool(targets) and all(t["health"] == "up" for t in targets)

        wait_for(up, timeout_s, "the daemon scraped (target up)", interval_s=0.2)


def finite_values(series: list[dict[str, Any]]) -> list[float]:
    """Every finite value of a range query's series (NaN: a quantile of no observations)."""
    values = [float(v) for s in series for _, v in s.get("values", [s.get("value", (0, "NaN"))])]
    return [v for v in values if math.isfinite(v)]


def wait_rules_evaluated(prometheus: Prometheus, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every loaded rule, once each has been evaluated at least once."""
    rules: list[dict[str, Any]] = []

    def evaluated() -> bool:
        nonlocal rules
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return bool(rules) and all(not r["lastEvaluation"].startswith("0001-") for r in rules)

    wait_for(evaluated, timeout_s, "every rule evaluated once", interval_s=0.5)
    return rules
