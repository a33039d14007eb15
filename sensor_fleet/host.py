"""`host` mode: a real agent for this machine, reporting new processes and TCP connections.

One collector (psutil) on Linux, macOS and Windows. What differs between them is isolated in
pure functions of psutil's documented structures (Process info dicts, `sconn`, `addr`), each
tested on built data: command lines, user names, who may read what, and the device id.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from event_processor.contract.rules import EVENT_CHECKS, EventType, Rejection

log = logging.getLogger(__name__)

# Namespace for the stable device id: uuid5(namespace, machine id).
_DEVICE_NAMESPACE = uuid.UUID("0b1e8d7a-2f64-4c1b-9a3e-5d7c6b8a9f01")
_MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
_IOREG = ["/usr/sbin/ioreg", "-rd1", "-c", "IOPlatformExpertDevice"]
_WINDOWS_CRYPTOGRAPHY_KEY = r"SOFTWARE\Microsoft\Cryptography"
# What the agent asks psutil of each process.
PROCESS_ATTRS = ("pid", "create_time", "username", "cmdline", "name")


@dataclass(frozen=True, slots=True)
class Process:
    user: str
    pid: int
    # psutil's create_time: pid alone is reused, pid + start time identifies one process.
    started: float
    cmdl: str

    @property
    def key(self) -> tuple[int, float]:
        return (self.pid, self.started)


@dataclass(frozen=True, slots=True)
class Connection:
    source_ip: str
    source_port: int
    destination_ip: str
    destination_port: int
    # The owning process's user, where the OS tells it; the contract does not carry it.
    user: str | None = field(default=None, compare=False)


# --- per-platform mapping of psutil's structures --------------------------------------------


def user_name(raw: str | None, platform: str) -> str | None:
    """The user as the contract's `user`: Windows says DOMAIN\\user, the others the login name."""
    if not raw:
        return None
    if platform == "win32":
        raw = raw.rpartition("\\")[2]
    return raw.strip() or None


def command_line(cmdline: list[str] | None, name: str | None, platform: str) -> str | None:
    """The process's command line as one string, or None when it has none to send.

    An empty list is a process without a command line (a Linux kernel thread, a zombie): not a
    program anyone started, so not sent. None is a command line the OS would not show this
    user (macOS and Windows hide other users' arguments, macOS a zombie's): the process name
    is what it shows.
    """
    if cmdline is None:
        return name.strip() if name and name.strip() else None
    if not any(arg.strip() for arg in cmdline):
        return None
    if platform == "win32":
        # Windows keeps one command-line string; psutil split it as CommandLineToArgvW does.
        return subprocess.list2cmdline(cmdline)
    # What ps prints: the arguments joined by spaces, each as it is.
    return " ".join(cmdline)


def process_from_info(info: Mapping[str, Any], platform: str) -> Process | None:
    """A Process from psutil's `as_dict` of PROCESS_ATTRS (None for what it could not read),
    or None when it has no user or command line to send."""
    user = user_name(info.get("username"), platform)
    cmdl = command_line(info.get("cmdline"), info.get("name"), platform)
    if user is None or cmdl is None or info.get("pid") is None:
        return None
    return Process(user, int(info["pid"]), float(info.get("create_time") or 0.0), cmdl)


def ip_text(address: str) -> str:
    """The address as the contract writes it: IPv4-mapped IPv6 as dotted IPv4, no zone id."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def connection_from_sconn(conn: Any, users: Mapping[int, str]) -> Connection | None:
    """A Connection from psutil's `sconn`, or None unless it is an established TCP connection
    with a remote end. `users` maps pids to their users (pid is None where the OS hides it)."""
    if conn.status != psutil.CONN_ESTABLISHED or not conn.raddr or not conn.laddr:
        return None
    return Connection(
        ip_text(conn.laddr.ip),
        int(conn.laddr.port),
        ip_text(conn.raddr.ip),
        int(conn.raddr.port),
        None if conn.pid is None else users.get(conn.pid),
    )


# --- the collector --------------------------------------------------------------------------


class Collector(Protocol):
    """What the agent reads of the machine each round: its processes, then its TCP connections
    (whose owners are named from that round's processes)."""

    def processes(self) -> list[Process]: ...

    def connections(self) -> list[Connection]: ...


class PsutilCollector:
    """Linux, macOS and Windows through psutil; the process and socket sources are injectable."""

    def __init__(
        self,
        platform: str = sys.platform,
        process_iter: Callable[[], Iterable[Any]] = psutil.process_iter,
        net_connections: Callable[[], list[Any]] = lambda: psutil.net_connections(kind="tcp"),
    ) -> None:
        self.platform = platform
        self._process_iter = process_iter
        self._net_connections = net_connections
        # pid -> user of the last listing, for the connections' owners.
        self._users: dict[int, str] = {}
        self._readable: list[Any] = []

    def processes(self) -> list[Process]:
        found: list[Process] = []
        readable: list[Any] = []
        for proc in self._process_iter():
            try:
                # A field the OS denies (or a zombie's) comes back as None; a process gone
                # since the listing raises NoSuchProcess.
                info = proc.as_dict(attrs=list(PROCESS_ATTRS), ad_value=None)
            except psutil.NoSuchProcess:
                continue
            process = process_from_info(info, self.platform)
            if process is not None:
                found.append(process)
                readable.append(proc)
        self._users = {p.pid: p.user for p in found}
        self._readable = readable
        return found

    def connections(self) -> list[Connection]:
        try:
            sconns = self._net_connections()
        except psutil.AccessDenied:
            # macOS lists the machine's sockets to root only: as a user, the agent reports
            # the connections of the processes it may read (its user's).
            sconns = self._per_process_connections()
        found = [connection_from_sconn(c, self._users) for c in sconns]
        return [c for c in found if c is not None]

    def _per_process_connections(self) -> list[Any]:
        sconns: list[Any] = []
        for proc in self._readable:
            try:
                # Process.net_connections' pconn has no pid: it is this process's.
                sconns.extend(
                    _PidConnection(c.laddr, c.raddr, c.status, proc.pid)
                    for c in proc.net_connections(kind="tcp")
                )
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return sconns


@dataclass(frozen=True, slots=True)
class _PidConnection:
    """A process's `pconn` with its pid: what `connection_from_sconn` reads of an `sconn`."""

    laddr: Any
    raddr: Any
    status: str
    pid: int


# --- the device id --------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _run(argv: list[str]) -> str:
    return subprocess.run(  # noqa: S603 - a fixed argv, no shell
        argv, capture_output=True, encoding="utf-8", check=True, timeout=10
    ).stdout


def _machine_guid() -> str:
    if sys.platform != "win32":
        raise OSError("MachineGuid is in the Windows registry")
    import winreg  # noqa: PLC0415 - Windows only

    # The 64-bit view: a 32-bit Python would otherwise read WOW6432Node, which has none.
    access = winreg.KEY_READ | winreg.KEY_WOW64_64KEY
    with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, _WINDOWS_CRYPTOGRAPHY_KEY, 0, access) as key:
        value, _ = winreg.QueryValueEx(key, "MachineGuid")
    return str(value)


@dataclass(frozen=True, slots=True)
class MachineReaders:
    """How each platform's machine id is read; tests pass their own."""

    read_text: Callable[[Path], str] = _read_text
    run: Callable[[list[str]], str] = _run
    machine_guid: Callable[[], str] = _machine_guid


def machine_id(platform: str, readers: MachineReaders | None = None) -> str | None:
    """The OS's own id of this machine: /etc/machine-id on Linux, IOPlatformUUID on macOS,
    MachineGuid on Windows; None when it cannot be read."""
    readers = readers or MachineReaders()
    try:
        if platform == "darwin":
            for line in readers.run(_IOREG).splitlines():
                # `    "IOPlatformUUID" = "564D1A2B-..."`
                if '"IOPlatformUUID"' in line:
                    return line.split("=", 1)[1].strip().strip('"') or None
            return None
        if platform == "win32":
            return readers.machine_guid().strip() or None
        for path in _MACHINE_ID_FILES:
            try:
                text = readers.read_text(path).strip()
            except OSError:
                continue
            if text:
                return text
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
    return None


def default_state_file(platform: str = sys.platform) -> Path:
    """Where the agent keeps its state: the per-user state directory of each platform."""
    if platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "sensor-fleet" / "host.json"


def device_id(
    state_file: Path, platform: str = sys.platform, readers: MachineReaders | None = None
) -> str:
    """This machine's stable device id: a UUIDv5 of the OS's machine id; without one, a
    generated id kept in the state file (with a warning: it lasts only as long as the file)."""
    found = machine_id(platform, readers)
    if found is not None:
        return str(uuid.uuid5(_DEVICE_NAMESPACE, found))
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        kept = str(uuid.UUID(state["device_id"]))
    except (OSError, ValueError, KeyError, TypeError):
        kept = str(uuid.uuid4())
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"device_id": kept}) + "\n", encoding="utf-8")
    log.warning(
        "no machine id on this %s machine: device id %s is kept in %s",
        platform,
        kept,
        state_file,
        extra={"action": "device_id", "device_id": kept, "state_file": str(state_file)},
    )
    return kept


# --- the agent ------------------------------------------------------------------------------


def _accepted(event_type: EventType, event: dict[str, Any]) -> bool:
    return not isinstance(EVENT_CHECKS[event_type](event), Rejection)


class HostAgent:
    """Remembers what it has reported; each scan yields only what is new since the last."""

    def __init__(self, device_id: str, collector: Collector | None = None) -> None:
        self.device_id = device_id
        self.collector: Collector = collector or PsutilCollector()
        self._seen_processes: set[tuple[int, float]] = set()
        self._seen_connections: set[Connection] = set()
        self._first_scan = True

    def scan(self) -> tuple[list[Process], list[Connection]]:
        processes = self.collector.processes()
        connections = self.collector.connections()
        new_processes = [p for p in processes if p.key not in self._seen_processes]
        new_connections = [c for c in connections if c not in self._seen_connections]
        # Forget what is gone, so memory follows the machine, not its uptime.
        self._seen_processes = {p.key for p in processes}
        self._seen_connections = set(connections)
        if self._first_scan:
            # The first scan is the baseline: "started since the last scan" needs a last scan.
            self._first_scan = False
            return [], []
        return new_processes, new_connections

    def submission(
        self, processes: list[Process], connections: list[Connection], time_created: str
    ) -> dict[str, Any]:
        """The submission of these; events the contract would reject (an IPv6 address, which
        it has no field for) are left out."""
        new_process = [{"cmdl": p.cmdl, "user": p.user} for p in processes]
        network_connection = [
            {
                "source_ip": c.source_ip,
                "destination_ip": c.destination_ip,
                "destination_port": c.destination_port,
            }
            for c in connections
        ]
        return {
            "submission_id": str(uuid.uuid4()),
            "device_id": self.device_id,
            "time_created": time_created,
            "events": {
                "new_process": [e for e in new_process if _accepted(EventType.NEW_PROCESS, e)],
                "network_connection": [
                    e for e in network_connection if _accepted(EventType.NETWORK_CONNECTION, e)
                ],
            },
        }
