"""LocalStack on the host, without Docker: docker-compose.yaml's `localstack` service as a process.

    python -m devworld.localstack_host install   # once; cached under .localstack-host/
    python -m devworld.localstack_host start     # background; waits for compose's healthcheck
    python -m devworld.localstack_host stop
    python -m devworld.localstack_host run -- CMD...   # start, run CMD, stop (also on failure)

The version (the image tag), the environment, the ready.d hook, the port and the healthcheck are
read from docker-compose.yaml, so the host run is the compose run minus Docker.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
SERVICE = "localstack"
# Pins per LocalStack version (the image's own requirements), kept in the repository.
PINS_DIR = ROOT / "localstack" / "host"
# The kinesis-mock release each LocalStack version asks for (its services/kinesis/packages.py);
# LocalStack would npm-install it on the first Kinesis call, install() does it beforehand.
KINESIS_MOCK_VERSIONS = {"4.14.0": "0.5.2"}
# Where a ready.d hook lives in the image; compose mounts the project's hook there.
READY_D = "/etc/localstack/init/ready.d/"

# localstack-core 4.14.0 does not import on 3.11 ("unsupported operand type(s) for |:
# 'builtin_function_or_method' and 'NoneType'"); the image runs 3.13.
PYTHON = "3.13"
# Seconds between healthcheck runs while starting, and between liveness checks while stopping.
POLL_S = 0.5
# How long stop() waits after SIGTERM before it SIGKILLs what is left of the process group.
STOP_TIMEOUT_S = 30.0
# Lines of LocalStack's log shown when it fails to start.
LOG_TAIL_LINES = 30

_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-+])(?P<default>[^}]*))?\}"
)


class HostError(Exception):
    """Installing, starting or stopping failed; the message says why and what to do."""


def interpolate(value: object, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default} (unset or empty), ${VAR-default},
    ${VAR:+replacement} (set and not empty), ${VAR+replacement} (set), $$."""

    def substitute(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, op, default = match["name"], match["op"], match["default"]
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if op == ":+":
            return default if env.get(name) else ""
        if op == "+":
            return default if name in env else ""
        return env.get(name, "")

    return _INTERPOLATION.sub(substitute, str(value))


def compose_service(name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A service of docker-compose.yaml, its environment interpolated from `env` (os.environ)."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))  # merge keys (<<) applied
    spec: dict[str, Any] = dict(doc["services"][name])
    source = os.environ if env is None else env
    spec["environment"] = {
        str(k): interpolate(v, source) for k, v in (spec.get("environment") or {}).items()
    }
    return spec


@dataclass(frozen=True)
class Service:
    """What the host run takes from compose's `localstack` service."""

    version: str
    environment: dict[str, str]
    hooks: list[Path]  # project files compose mounts into ready.d
    listen: str  # host:port, from the published port
    healthcheck: str  # the CMD-SHELL command, interpolated
    start_timeout_s: float  # start_period + retries x interval, as compose allows

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.listen}"

    @classmethod
    def from_compose(cls, env: Mapping[str, str] | None = None) -> Service:
        spec = compose_service(SERVICE, env)
        version = str(spec["image"]).rpartition(":")[2]
        hooks = []
        for volume in spec.get("volumes", []):
            source, target = str(volume).split(":")[:2]
            if target.startswith(READY_D):
                hooks.append((ROOT / source).resolve())
        # "127.0.0.1:4566:4566" (or "4566:4566"): the host side is where clients reach it.
        published = str(spec["ports"][0]).split(":")
        host, port = published[:2] if len(published) == 3 else ("127.0.0.1", published[0])
        check = spec["healthcheck"]
        kind, command = check["test"]
        if kind != "CMD-SHELL":
            raise HostError(f"compose's {SERVICE} healthcheck is {kind}, not CMD-SHELL")
        timeout = seconds(check["start_period"]) + check["retries"] * seconds(check["interval"])
        return cls(
            version=version,
            environment=spec["environment"],
            hooks=hooks,
            listen=f"{host}:{port}",
            healthcheck=interpolate(command, {}),
            start_timeout_s=timeout,
        )


def seconds(duration: str) -> float:
    """A compose duration ("30s", "1m30s") in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


@dataclass(frozen=True)
class Paths:
    """Everything the host run keeps, under one gitignored prefix."""

    prefix: Path

    @property
    def venv(self) -> Path:  # LocalStack's own Python 3.13 venv
        return self.prefix / "lsenv"

    @property
    def fsroot(self) -> Path:  # FILESYSTEM_ROOT: what the image keeps in /var/lib, /etc, ...
        return self.prefix / "lsfs"

    @property
    def bin(self) -> Path:  # put first on LocalStack's PATH: the awslocal its hooks call
        return self.prefix / "bin"

    @property
    def stamp(self) -> Path:
        return self.prefix / ".installed"

    @property
    def pidfile(self) -> Path:
        return self.prefix / "localstack.pid"

    @property
    def log(self) -> Path:
        return self.prefix / "localstack.log"

    def kinesis_mock(self, version: str) -> Path:
        # LocalStack's NodePackageInstaller looks for <var_libs>/kinesis-local/<version>/...
        return self.fsroot / "var/lib/localstack/lib/kinesis-local" / version


def default_paths() -> Paths:
    return Paths(Path(os.environ.get("LOCALSTACK_HOST_PREFIX", ROOT / ".localstack-host")))


# --- install -------------------------------------------------------------------------------------


def find_python() -> str:
    """A Python 3.13 that runs: $PY313, python3.13 on PATH, or one that pyenv installed."""
    candidates = [os.environ.get("PY313", ""), f"python{PYTHON}"]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        pyenv_root = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, check=True
        ).stdout.strip()
        # A pyenv shim exists even when 3.13 is not a selected version, and then fails.
        candidates += sorted(
            str(p) for p in Path(pyenv_root).glob(f"versions/{PYTHON}*/bin/python{PYTHON}")
        )
    for candidate in filter(None, candidates):
        with contextlib.suppress(OSError):
            if (
                subprocess.run([candidate, "-c", ""], capture_output=True, check=False).returncode
                == 0
            ):
                return candidate
    raise HostError(f"python{PYTHON} not found: `pyenv install {PYTHON}`, or set PY313")


def _pins(version: str) -> Path:
    pins = PINS_DIR / f"constraints-{version}.txt"
    if not pins.is_file() or version not in KINESIS_MOCK_VERSIONS:
        raise HostError(
            f"docker-compose.yaml pins LocalStack {version}, but {pins.relative_to(ROOT)} or its "
            f"kinesis-mock version is missing: add the image's requirements-runtime.txt there"
        )
    return pins


def _fingerprint(service: Service) -> str:
    pins = _pins(service.version).read_bytes()
    return json.dumps(
        {
            "localstack": service.version,
            "kinesis_mock": KINESIS_MOCK_VERSIONS[service.version],
            "pins": hashlib.sha256(pins).hexdigest(),
            "aws": _aws_cli(),
        },
        sort_keys=True,
    )


def _aws_cli() -> str:
    """The project venv's AWS CLI (awscli is a dev dependency), for the awslocal shim."""
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
    if aws is None:
        raise HostError("no `aws` CLI: run `make install` (awscli is in the dev extra)")
    return aws


def install(service: Service, paths: Paths) -> bool:
    """Install LocalStack, kinesis-mock and awslocal under the prefix; False if cached already."""
    fingerprint = _fingerprint(service)
    if paths.stamp.is_file() and paths.stamp.read_text(encoding="utf-8") == fingerprint:
        return False
    paths.prefix.mkdir(parents=True, exist_ok=True)
    paths.stamp.unlink(missing_ok=True)
    if not (paths.venv / "bin/python").is_file():
        _run([find_python(), "-m", "venv", str(paths.venv)])
    pip = [str(paths.venv / "bin/python"), "-m", "pip", "install", "--quiet"]
    _run([*pip, "--upgrade", "pip"])
    _run([*pip, "-c", str(_pins(service.version)), f"localstack-core[runtime]=={service.version}"])

    kinesis_version = KINESIS_MOCK_VERSIONS[service.version]
    target = paths.kinesis_mock(kinesis_version)
    if not (target / "node_modules/kinesis-local/main.js").is_file():
        target.mkdir(parents=True, exist_ok=True)
        npm = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(target)]
        _run([*npm, f"kinesis-local@{kinesis_version}"])

    # The image's awslocal is awscli-local; today's release prints a deprecation banner on every
    # call. The hook needs only "the AWS CLI on LocalStack's endpoint", so a shim does it.
    paths.bin.mkdir(exist_ok=True)
    shim = paths.bin / "awslocal"
    shim.write_text(
        "#!/bin/sh\n# awslocal for LocalStack's ready.d hooks on the host: the AWS CLI on its endpoint.\n"
        f'exec "{_aws_cli()}" --endpoint-url "{service.endpoint_url}" "$@"\n',
        encoding="utf-8",
    )
    shim.chmod(0o755)
    paths.stamp.write_text(fingerprint, encoding="utf-8")
    return True


def _run(command: Sequence[str]) -> None:
    print("+", " ".join(command), flush=True)
    if subprocess.run(command, check=False).returncode != 0:
        raise HostError(f"failed: {' '.join(command)}")


# --- start and stop ------------------------------------------------------------------------------


def host_environment(service: Service, paths: Paths) -> dict[str, str]:
    """Compose's environment for the service, plus what running outside its container needs."""
    base = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR", "TZ"}}
    return {
        **base,
        **service.environment,
        "PATH": f"{paths.bin}{os.pathsep}{base.get('PATH', os.defpath)}",
        # A machine with /.dockerenv (CI's) would make LocalStack take itself for its own
        # container and use /var/lib/localstack, /usr/lib/localstack and /etc/localstack.
        "OVERRIDE_IN_DOCKER": "0",
        "FILESYSTEM_ROOT": str(paths.fsroot),
        # Compose publishes 127.0.0.1:4566 only; the gateway binds just that.
        "GATEWAY_LISTEN": service.listen,
        # In its container LocalStack's DNS server has port 53 to itself; on the host it must not
        # take the machine's. The rest would reach out to localstack.cloud, which is not needed.
        "DNS_ADDRESS": "0",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
    }


def healthy(service: Service) -> bool:
    """compose's own healthcheck command: the services answer and the ready.d hook succeeded."""
    result = subprocess.run(["sh", "-c", service.healthcheck], capture_output=True, check=False)
    return result.returncode == 0


def _port_taken(listen: str) -> bool:
    host, port = listen.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def running_pid(paths: Paths) -> int | None:
    """The pid of the LocalStack that start() left running, if it still runs."""
    try:
        pid = int(paths.pidfile.read_text(encoding="utf-8"))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # A pid the kernel gave to another process since is not ours to stop.
    return pid if b"localstack.runtime.main" in cmdline else None


def start(service: Service, paths: Paths) -> int:
    """Start LocalStack in its own process group; return its pid once compose calls it healthy."""
    if not paths.stamp.is_file():
        raise HostError(
            "LocalStack is not installed here: `python -m devworld.localstack_host install`"
        )
    if (pid := running_pid(paths)) is not None:
        raise HostError(f"LocalStack already runs (pid {pid}); `... stop` it first")
    if _port_taken(service.listen):
        raise HostError(f"{service.listen} is taken by another process (a LocalStack in Docker?)")
    ready_d = paths.fsroot / READY_D.lstrip("/")
    if ready_d.exists():
        shutil.rmtree(ready_d)  # only the hooks compose mounts, as in a fresh container
    ready_d.mkdir(parents=True)
    for hook in service.hooks:
        shutil.copy2(hook, ready_d / hook.name)
    with paths.log.open("wb") as log:
        process = subprocess.Popen(
            [str(paths.venv / "bin/python"), "-m", "localstack.runtime.main"],
            env=host_environment(service, paths),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: kinesis-mock and the hooks join its group, which stop() ends.
            start_new_session=True,
            cwd=paths.prefix,
        )
    paths.pidfile.write_text(str(process.pid), encoding="utf-8")
    deadline = time.monotonic() + service.start_timeout_s
    while not healthy(service):
        failure = None
        if process.poll() is not None:
            failure = f"LocalStack exited with {process.returncode}"
        elif time.monotonic() > deadline:
            failure = f"LocalStack not healthy after {service.start_timeout_s:g} s"
        if failure:
            tail = paths.log.read_text(encoding="utf-8", errors="replace").splitlines()
            stop(paths)
            raise HostError(
                f"{failure}; {paths.log} ends with:\n" + "\n".join(tail[-LOG_TAIL_LINES:])
            )
        time.sleep(POLL_S)
    return process.pid


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(paths: Paths) -> bool:
    """SIGTERM LocalStack's process group, SIGKILL what is left after the timeout; False if none."""
    pid = running_pid(paths)
    paths.pidfile.unlink(missing_ok=True)
    if pid is None:
        return False
    os.killpg(pid, signal.SIGTERM)  # the group start() created: its id is LocalStack's pid
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _group_alive(pid):
        if time.monotonic() > deadline:
            print(
                f"LocalStack (pid {pid}) still running after {STOP_TIMEOUT_S:g} s: SIGKILL",
                file=sys.stderr,
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            deadline = float("inf")
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when start() and stop() share this process
        time.sleep(POLL_S)
    return True


@contextlib.contextmanager
def running(service: Service, paths: Paths) -> Iterator[int]:
    """LocalStack started for the block and stopped after it, whatever happens in it."""
    try:
        yield start(service, paths)
    finally:
        stop(paths)


def run(service: Service, paths: Paths, command: Sequence[str]) -> int:
    """Start LocalStack, run `command` against it, stop LocalStack; the command's exit status."""
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not children:  # still starting: give up, and let running() stop what started
            raise HostError(f"interrupted by {signal.Signals(signum).name}")
        # A terminal's Ctrl-C reaches the command too (same process group): not twice.
        if signum != signal.SIGINT:
            children[0].send_signal(signum)

    # Before start(): a SIGTERM while LocalStack starts must not leave it running.
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with running(service, paths) as pid:
            print(
                f"LocalStack {service.version} up at {service.endpoint_url} (pid {pid})", flush=True
            )
            children.append(subprocess.Popen(command))
            code = children[0].wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("LocalStack stopped", flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devworld.localstack_host",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["install", "start", "stop", "run"])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="run: the command (after --)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    paths = default_paths()
    try:
        service = Service.from_compose()
        if args.action == "install":
            began = time.monotonic()
            fresh = install(service, paths)
            what = (
                f"installed in {time.monotonic() - began:.0f} s" if fresh else "already installed"
            )
            print(
                f"LocalStack {service.version} + kinesis-mock "
                f"{KINESIS_MOCK_VERSIONS[service.version]}: {what} ({paths.prefix})"
            )
        elif args.action == "start":
            pid = start(service, paths)
            print(
                f"LocalStack {service.version} up at {service.endpoint_url} (pid {pid}, log {paths.log})"
            )
        elif args.action == "stop":
            print("LocalStack stopped" if stop(paths) else "LocalStack was not running")
        else:
            if not command:
                parser.error("run needs a command: run -- CMD...")
            return run(service, paths, command)
    except HostError as exc:
        print(f"localstack_host: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
