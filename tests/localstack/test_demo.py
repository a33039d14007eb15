"""`event-processor demo --endpoint-url` against LocalStack, as docs/local-world.md offers it: signed
fleet, rogue device, daemon enforcing the init hook's key set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import check_rogue_refused
from tests.localstack.support import LocalStack

pytestmark = pytest.mark.localstack


def test_demo_against_localstack_verifies(localstack: LocalStack) -> None:
    """The demo runs fleet, rogue and daemon on LocalStack's world and key set; the read-back
    passes and every submission of the rogue was rejected."""
    env = {**os.environ, **localstack.client_env(), "PYTHONUNBUFFERED": "1"}
    del env["AWS_ENDPOINT_URL"]  # the flag alone says where
    result = subprocess.run(
        [sys.executable, "-m", "event_processor", "demo", "--duration", "10",
         "--metrics-port", "0", "--endpoint-url", localstack.endpoint_url],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    print(
        "\n"
        + "\n".join(
            line
            for line in result.stdout.splitlines()
            if line.startswith(("keys", "verification:", "rogue", "RESULT:")) or ": sent " in line
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"using the AWS endpoint at {localstack.endpoint_url}" in result.stdout
    # The init hook's key set, kept: the demo signs as the compose fleet does.
    secret = localstack.compose_env("localstack")["AUTH_KEYS_SECRET_NAME"]
    assert f"keys   secret {secret} (kept as it was)" in result.stdout
    assert "missing 0, unexpected 0, out of order 0, split across shards 0" in result.stdout
    check_rogue_refused(result.stdout)
    assert "RESULT: PASS" in result.stdout
