"""`awslocal` for the tests: the AWS CLI of this venv on $AWS_ENDPOINT_URL, as LocalStack's own
wraps it, served by one process that imported the CLI once and forks for each call.

The init hook's tests run the hook a dozen times, a dozen AWS CLI calls each; a fresh
interpreter importing awscli and building its driver for every call made them the slowest
file of the static tier. Here a call costs a fork: the shim (a stdlib-only client, started
with -S) hands the server its argv, environment, working directory and its stdin, stdout and
stderr (SCM_RIGHTS), and exits with the CLI's exit code. The child sets the caller's
environment before the CLI reads it: region and credentials are resolved per call. The one
thing read when the driver is built, before any call, is the config file: the server is
started with the tests' AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE (os.devnull).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

_HEADER = struct.Struct("!I")
_EXIT = struct.Struct("!i")
READY = "awslocal server ready"

# The shim's client: stdlib only, so that `python -S` starts it in a few milliseconds.
_CLIENT = """\
import json, os, socket, struct, sys
path, args = sys.argv[1], sys.argv[2:]
payload = json.dumps({"argv": args, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
    s.connect(path)
    socket.send_fds(s, [struct.pack("!I", len(payload))], [0, 1, 2])
    s.sendall(payload)
    answer = b""
    while len(answer) < 4:
        chunk = s.recv(4 - len(answer))
        if not chunk:
            sys.exit("awslocal: the AWS CLI server went away")
        answer += chunk
sys.exit(struct.unpack("!i", answer)[0])
"""


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError("the client went away")
        data += chunk
    return data


def _answer(conn: socket.socket, driver: object) -> int:
    """In the forked child: become the caller (fds, environment, directory), run the CLI."""
    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    (size,) = _HEADER.unpack(header)
    request = json.loads(_read_exactly(conn, size))
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    # awscli's import put its own data directory on AWS_DATA_PATH; the caller's value has not.
    data_path = os.environ["AWS_DATA_PATH"]
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ["AWS_DATA_PATH"] = data_path
    os.chdir(request["cwd"])
    try:
        code = driver.main(request["argv"])  # type: ignore[attr-defined]
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    return int(code or 0)


def serve(path: str) -> None:
    """Import the CLI, build its driver, then fork once per connection."""
    from awscli.clidriver import create_clidriver  # type: ignore[import-untyped]  # noqa: PLC0415

    driver = create_clidriver()
    # What every call would build again: the command table and the hook's services' models
    # (the session's loader caches them; each child inherits the cache).
    driver._get_command_table()  # a warm-up, not a behaviour
    for service in ("sqs", "kinesis", "secretsmanager"):
        driver.session.get_service_model(service)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(64)
        print(READY, flush=True)
        while True:
            conn, _ = server.accept()
            if os.fork() == 0:
                server.close()
                code = 1
                try:
                    code = _answer(conn, driver)
                except BaseException:  # shown to the caller, never to the server
                    traceback.print_exc()
                    sys.stderr.flush()
                finally:
                    with contextlib.suppress(OSError):
                        conn.sendall(_EXIT.pack(code))
                    os._exit(0)
            conn.close()


@contextlib.contextmanager
def awslocal(directory: Path) -> Iterator[Path]:
    """`directory`, holding an `awslocal` on PATH for as long as the block runs."""
    sock = directory / "awscli.sock"
    client = directory / "awslocal-client.py"
    client.write_text(_CLIENT, encoding="utf-8")
    shim = directory / "awslocal"
    shim.write_text(
        "#!/bin/sh\n"
        "# awslocal for tests: the AWS CLI against $AWS_ENDPOINT_URL, like LocalStack's own.\n"
        f"exec {shlex.quote(sys.executable)} -S {shlex.quote(str(client))}"
        f' {shlex.quote(str(sock))} --endpoint-url "$AWS_ENDPOINT_URL" "$@"\n',
        encoding="utf-8",
    )
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    with subprocess.Popen(
        [sys.executable, "-m", "tests.awslocal", str(sock)],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            line = server.stdout.readline().strip()  # its one line, or EOF if it died
            assert line == READY, f"the AWS CLI server did not start: {line!r}"
            yield directory
        finally:
            server.kill()


if __name__ == "__main__":
    serve(sys.argv[1])
