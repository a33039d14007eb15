"""`host` mode: a real agent for this machine, reporting new processes and TCP connections.

Parsers are pure functions over `ps` output and /proc/net/tcp text, tested on recorded samples.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PS_COMMAND = ["ps", "-e", "-o", "user,pid,%cpu,%mem,vsz,rss,tty,stat,start,time,args"]
# Namespace for the stable device id: uuid5(namespace, machine id).
_DEVICE_NAMESPACE = uuid.UUID("0b1e8d7a-2f64-4c1b-9a3e-5d7c6b8a9f01")
_MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
# /proc/net/tcp state code for ESTABLISHED.
_TCP_ESTABLISHED = "01"

# One ps line. STARTED is "HH:MM:SS" today, "Mmm dd" (two tokens) before, or a year;
# everything after TIME is the command with its own spaces, kept as they are.
_PS_LINE = re.compile(
    r"^\s*(?P<user>\S+)\s+(?P<pid>\d+)\s+\S+\s+\S+\s+\d+\s+\d+\s+(?P<tty>\S+)\s+(?P<stat>\S+)\s+"
    r"(?P<start>\d{1,2}:\d{2}:\d{2}|[A-Za-z]{3}\s+\d{1,2}|[A-Za-z]{3}\d{2}|\d{4})\s+"
    r"(?P<time>(?:\d+-)?\d{1,2}:\d{2}(?::\d{2})?)\s(?P<args>.*?)\s*$"
)


@dataclass(frozen=True, slots=True)
class Process:
    user: str
    pid: int
    start: str
    args: str

    @property
    def key(self) -> tuple[int, str, str]:
        # pid alone is reused; pid + start + args identifies one process.
        return (self.pid, self.start, self.args)


@dataclass(frozen=True, slots=True)
class Connection:
    source_ip: str
    source_port: int
    destination_ip: str
    destination_port: int


def parse_ps(output: str) -> list[Process]:
    """Processes from `ps -e -o user,pid,...,args` output; the header and odd lines are skipped."""
    processes = []
    for line in output.splitlines()[1:]:
        match = _PS_LINE.match(line)
        if match is None or not match["args"]:
            continue
        processes.append(
            Process(
                match["user"], int(match["pid"]), " ".join(match["start"].split()), match["args"]
            )
        )
    return processes


def _ipv4(hex_address: str) -> str:
    # /proc/net/tcp prints the address as a host-order (little-endian) 32-bit hex number.
    return socket.inet_ntoa(struct.pack("<I", int(hex_address, 16)))


def parse_proc_net_tcp(text: str) -> list[Connection]:
    """ESTABLISHED IPv4 connections from /proc/net/tcp text."""
    connections = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != _TCP_ESTABLISHED:
            continue
        try:
            local_ip, local_port = fields[1].split(":")
            remote_ip, remote_port = fields[2].split(":")
            connections.append(
                Connection(
                    _ipv4(local_ip), int(local_port, 16), _ipv4(remote_ip), int(remote_port, 16)
                )
            )
        except (ValueError, struct.error):
            continue
    return connections


def machine_device_id() -> str:
    """A stable UUIDv5 of the machine id (hostname when there is none)."""
    for path in _MACHINE_ID_FILES:
        try:
            machine_id = path.read_text().strip()
        except OSError:
            continue
        if machine_id:
            return str(uuid.uuid5(_DEVICE_NAMESPACE, machine_id))
    return str(uuid.uuid5(_DEVICE_NAMESPACE, socket.gethostname()))


class HostAgent:
    """Remembers what it has reported; each scan yields only what is new since the last."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self._seen_processes: set[tuple[int, str, str]] = set()
        self._seen_connections: set[Connection] = set()
        self._first_scan = True

    def scan(self, ps_output: str, proc_net_tcp: str) -> tuple[list[Process], list[Connection]]:
        processes = parse_ps(ps_output)
        connections = parse_proc_net_tcp(proc_net_tcp)
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
        return {
            "submission_id": str(uuid.uuid4()),
            "device_id": self.device_id,
            "time_created": time_created,
            "events": {
                "new_process": [{"cmdl": p.args, "user": p.user} for p in processes],
                "network_connection": [
                    {
                        "source_ip": c.source_ip,
                        "destination_ip": c.destination_ip,
                        "destination_port": c.destination_port,
                    }
                    for c in connections
                ],
            },
        }


def read_host() -> tuple[str, str]:
    """Run ps and read /proc/net/tcp (empty where there is none, e.g. macOS)."""
    ps = subprocess.run(  # noqa: S603 - a fixed argv, no shell
        PS_COMMAND, capture_output=True, encoding="utf-8", errors="replace", check=True, timeout=30
    )
    try:
        tcp = Path("/proc/net/tcp").read_text()
    except OSError:
        tcp = ""
    return ps.stdout, tcp
