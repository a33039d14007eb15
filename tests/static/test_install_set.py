"""The install sets. Statically: every third-party module the daemon and the fleet import comes
with the runtime dependencies (or the extra that guards it). And the image's set, rebuilt without
a Docker engine: a venv gets what the Dockerfile's pip line installs, from the files its COPY
lines put in the build context; it holds no emulator or demo dependency, yet runs the daemon,
the operator tools and the fleet. That venv is kept between runs (see the image_venv fixture).
And conda.yaml's environment: the runtime dependencies of pyproject.toml, with the same bounds.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devworld.emulator import Emulator, World
from tests.helpers import queue_depth, wait_for
from tests.static.support import (
    DOCKERFILE,
    ROOT,
    dockerfile_instructions,
    dockerignore_excludes,
    load_yaml,
    run,
)

CONDA_FILE = ROOT / "conda.yaml"
# The packages `pip install .` must run; devworld (the `demo` extra's) is imported only by `demo`.
RUNTIME_PACKAGES = ("event_processor", "sensor_fleet")
FIRST_PARTY = {*RUNTIME_PACKAGES, "devworld"}
# Modules imported inside a function, for a feature that an extra installs.
FROM_EXTRAS = {"localstack_client": "fleet"}
# Distributions only the `demo` extra (moto[server], rich) brings; none belongs in the image.
DEMO_ONLY = {"moto", "flask", "werkzeug", "docker", "cfn-lint", "rich", "sympy", "networkx"}
# A cold pip cache downloads ~40 MB; a warm one installs in well under a minute.
INSTALL_TIMEOUT_S = 240
# The image's venv, kept between runs (in .gitignore; `make clean` removes it).
IMAGE_VENV_CACHE = ROOT / ".cache" / "image-venv"
# How long the daemon of the image's venv may take to drain one fleet round.
DRAIN_TIMEOUT_S = 60.0


def third_party_imports(package: str) -> set[str]:
    """Top-level modules a package imports at run time: not stdlib, not ours, not TYPE_CHECKING."""
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.partition(".")[0])
    return found - set(sys.stdlib_module_names) - FIRST_PARTY - {"__future__"}


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions pip installs for `requirements`, read from this venv's metadata."""
    seen: set[tuple[str, str]] = set()  # (distribution, extra), "" for its plain requirements
    pending = [(Requirement(spec), {""}) for spec in requirements]
    while pending:
        requirement, parent_extras = pending.pop()
        marker = requirement.marker
        if marker and not any(marker.evaluate({"extra": extra}) for extra in parent_extras):
            continue
        name = canonicalize_name(requirement.name)
        # A distribution met again with another extra brings that extra's requirements too.
        extras = {"", *requirement.extras} - {extra for dist, extra in seen if dist == name}
        if not extras:
            continue
        seen.update((name, extra) for extra in extras)
        requires = importlib.metadata.distribution(name).requires or []
        pending.extend((Requirement(spec), extras) for spec in requires)
    return {name for name, _ in seen}


def distributions_of(module: str) -> set[str]:
    """The distribution(s) installing a top-level module, in this venv."""
    names = importlib.metadata.packages_distributions().get(module)
    assert names, f"{module} is imported but not installed here"
    return {canonicalize_name(name) for name in names}


@pytest.mark.parametrize("package", RUNTIME_PACKAGES)
def test_runtime_dependencies_bring_every_import(package: str) -> None:
    """What a runtime package imports comes with `pip install .` (or with the extra guarding it)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = installed_closure(project["dependencies"])
    imports = third_party_imports(package)
    assert imports, package
    for module in sorted(imports):
        extra = FROM_EXTRAS.get(module)
        wanted = runtime | (
            installed_closure(project["optional-dependencies"][extra]) if extra else set()
        )
        assert distributions_of(module) & wanted, (
            f"{package} imports {module}, which {'the ' + extra + ' extra' if extra else 'pip install .'}"
            " does not install: add it to pyproject.toml"
        )


def test_the_runtime_install_set_has_no_demo_dependency() -> None:
    """`pip install .` (as resolved in this venv) brings no moto, flask, rich..."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = installed_closure(project["dependencies"])
    assert not runtime & DEMO_ONLY, sorted(runtime & DEMO_ONLY)


@dataclass(frozen=True)
class ImageVenv:
    """A venv holding what the image's /opt/venv holds, and a way to run its programs."""

    path: Path
    env: dict[str, str]
    # A directory outside this checkout, for the programs' working directory.
    cwd: Path

    def run(self, program: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run one of the venv's programs, outside this checkout (cwd) and this venv (env)."""
        return run([str(self.path / "bin" / program), *args], env={**self.env, **env}, cwd=self.cwd)


def builder_stage() -> list[tuple[str, str]]:
    """The instructions before the last FROM: the stage that fills /opt/venv."""
    instructions = dockerfile_instructions()
    last = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[:last]


def copy_build_context(destination: Path) -> None:
    """What the builder's COPY lines take from the context (minus .dockerignore), under WORKDIR."""
    for keyword, args in builder_stage():
        if keyword != "COPY" or args.startswith("--"):
            continue
        *sources, target = shlex.split(args)
        for source in sources:
            path = ROOT / source
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if dockerignore_excludes(relative):
                    continue
                # `COPY a b ./` puts files in the directory; `COPY pkg ./pkg` puts pkg's content there.
                inside = file.name if path.is_file() else file.relative_to(path).as_posix()
                copied = destination / target / inside
                copied.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, copied)


def pip_install_args() -> list[str]:
    """The arguments of the builder's one `pip install`, minus --no-cache-dir (the cache helps)."""
    lines = [
        args for keyword, args in builder_stage() if keyword == "RUN" and "pip install" in args
    ]
    assert len(lines) == 1, f"expected one RUN ... pip install in the builder stage: {lines}"
    words = shlex.split(lines[0])
    assert not {"&&", ";", "|"} & set(words), f"one command per pip RUN, please: {lines[0]}"
    install = words.index("install")
    assert words[install - 1].endswith("pip"), lines[0]
    return [word for word in words[install + 1 :] if word != "--no-cache-dir"]


def image_venv_key() -> str:
    """What decides the image venv's dependencies: the interpreter, pyproject.toml (the
    requirements) and the Dockerfile (the pip line). The project's own code does not: see
    tree_digest."""
    digest = hashlib.sha256(sys.version.encode())
    for path in (ROOT / "pyproject.toml", DOCKERFILE):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def tree_digest(directory: Path) -> str:
    """A digest of every file under `directory`, by path and content."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (made if missing): one builder of the cache at a time, across
    pytest-xdist workers and concurrent runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pip(venv: Path, *args: str, cwd: Path, env: dict[str, str]) -> None:
    """`pip install --quiet ARGS` in `venv`, from `cwd` (the build context); it must succeed."""
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> ImageVenv:
    """A venv (this interpreter) with what the Dockerfile installs, from its build context.

    Built once per image_venv_key() under IMAGE_VENV_CACHE (the first run pays ~40 s of pip);
    a later run whose build context differs reinstalls only the project, without its
    dependencies, which that key fixes. The stamp records the build context installed.
    """
    root = tmp_path_factory.mktemp("image")
    context = root / "src"
    copy_build_context(context)
    built = tree_digest(context)
    # Nothing of this checkout's venv leaks in; pip's own config (index, cache) still applies.
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    key = image_venv_key()
    venv = IMAGE_VENV_CACHE / key
    stamp = venv / "image-context.sha256"
    with locked(IMAGE_VENV_CACHE / ".lock"):
        if not stamp.is_file():  # a first run for this key, or an interrupted one
            for stale in IMAGE_VENV_CACHE.iterdir():
                if stale.is_dir():
                    shutil.rmtree(stale)
            created = run([sys.executable, "-m", "venv", str(venv)], env=env)
            assert created.returncode == 0, created.stderr
            pip(venv, *pip_install_args(), cwd=context, env=env)
        elif stamp.read_text(encoding="utf-8") != built:
            pip(venv, "--no-deps", "--force-reinstall", *pip_install_args(), cwd=context, env=env)
        stamp.write_text(built, encoding="utf-8")
    return ImageVenv(venv, env, root)


def test_the_image_installs_the_fleet_extra_only() -> None:
    """The Dockerfile installs the project with the `fleet` extra, not `demo` or `dev`."""
    assert pip_install_args() == [".[fleet]"]


def test_image_venv_holds_no_emulator_or_demo_dependency(image_venv: ImageVenv) -> None:
    """No moto, flask, werkzeug, docker SDK, cfn-lint or rich; the project and the fleet extra."""
    listed = image_venv.run("python", "-m", "pip", "list", "--format=json")
    assert listed.returncode == 0, listed.stderr
    names = {entry["name"].lower().replace("_", "-") for entry in json.loads(listed.stdout)}
    assert not names & DEMO_ONLY, sorted(names & DEMO_ONLY)
    assert {"event-processor", "aiobotocore", "boto3", "localstack-client"} <= names


def test_every_module_imports_in_the_image_venv(image_venv: ImageVenv) -> None:
    """Each module of both packages imports, and so do the lazy imports; devworld stays out."""
    script = (
        "import importlib, importlib.util, pkgutil\n"
        "import event_processor, sensor_fleet\n"
        "for package in (event_processor, sensor_fleet):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        # __main__ would run the CLI.
        "        if not module.name.endswith('.__main__'):\n"
        "            importlib.import_module(module.name)\n"
        # Imported inside functions: the tools' boto3, run's uvloop, the fleet's localstack-client.
        "import boto3, uvloop, localstack_client.session\n"
        "assert importlib.util.find_spec('devworld') is None, 'devworld is in the image'\n"
    )
    result = image_venv.run("python", "-c", script)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["event-processor", "--help"],
        ["event-processor", "run", "--help"],
        ["event-processor", "dlq", "inspect", "--help"],
        ["event-processor", "dlq", "redrive", "--help"],
        ["event-processor", "tail", "--help"],
        ["sensor-fleet", "--help"],
        ["sensor-fleet", "simulate", "--help"],
    ],
    ids=" ".join,
)
def test_console_scripts_start(image_venv: ImageVenv, command: list[str]) -> None:
    """The image's console scripts and subcommands parse their arguments and print help."""
    result = image_venv.run(*command)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout


def test_demo_says_how_to_install_it(image_venv: ImageVenv) -> None:
    """Without the demo extra, `event-processor demo` fails with one line naming the install."""
    result = image_venv.run("event-processor", "demo")
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install" in lines[0]


def test_image_venv_runs_fleet_daemon_and_tools(
    image_venv: ImageVenv, emulator: Emulator, world: World
) -> None:
    """From the image's venv: the fleet (via localstack-client) sends, the daemon publishes and
    drains on SIGTERM, `tail` reads the records back, `dlq inspect` reads the DLQ."""
    aws = {
        **emulator.client_env(),
        "QUEUE_URL": world.queue_url,
        "DLQ_URL": world.dlq_url,
        "STREAM_NAME": world.stream_name,
    }
    # localstack-client finds "LocalStack" (here the emulator) through LOCALSTACK_HOST.
    host = emulator.endpoint_url.removeprefix("http://")
    fleet = image_venv.run(
        "sensor-fleet", "simulate", "--fleet-size", "3", "--rounds", "1",
        "--invalid-probability", "0", **aws, LOCALSTACK_HOST=host,
    )  # fmt: skip
    assert fleet.returncode == 0, fleet.stderr
    assert "sent 3 submissions" in fleet.stdout, fleet.stdout

    daemon = subprocess.Popen(
        [str(image_venv.path / "bin" / "event-processor"), "run"],
        env={**image_venv.env, **aws, "METRICS_PORT": "0", "WAIT_TIME_SECONDS": "1"},
        cwd=image_venv.cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: not queue_depth(emulator, world.queue_url) or daemon.poll() is not None,
            DRAIN_TIMEOUT_S,
            "the daemon drains the queue",
        )
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=30)
    assert daemon.returncode == 0, err

    tail = image_venv.run("event-processor", "tail", "--from", "trim-horizon", "--no-follow", **aws)
    assert tail.returncode == 0, tail.stderr
    records = [json.loads(line) for line in tail.stdout.splitlines() if line.strip()]
    assert records, "tail printed no record"

    inspect = image_venv.run("event-processor", "dlq", "inspect", "--json", **aws)
    assert inspect.returncode == 0, inspect.stderr
    json.loads(inspect.stdout)


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
