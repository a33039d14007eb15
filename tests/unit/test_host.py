"""The host agent's platform mappings, on data built from psutil's documented structures (its
Process info dicts, `sconn`, `pconn`, `addr`) as each OS fills them, and its device id with
injected readers."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

try:  # psutil's documented connection tuples, wherever this release keeps them
    from psutil._ntuples import addr, pconn, sconn
except ImportError:  # psutil < 7.2
    from psutil._common import (  # type: ignore[attr-defined,no-redef,unused-ignore]
        addr,
        pconn,
        sconn,
    )

from event_processor.contract.parse import ParsedSubmission, parse_submission
from event_processor.tools.aws import ToolError
from sensor_fleet import host
from sensor_fleet.cli import agent_device_id
from sensor_fleet.generator import encode
from sensor_fleet.host import (
    Connection,
    HostAgent,
    MachineReaders,
    Process,
    PsutilCollector,
    command_line,
    default_state_file,
    device_id,
    machine_id,
)

ESTABLISHED = psutil.CONN_ESTABLISHED
TCP = socket.SOCK_STREAM


class FakeProcess:
    """What the collector calls of psutil.Process: as_dict (PROCESS_ATTRS) and net_connections.

    An exception as a field's value is what reading that field raises: as psutil's as_dict,
    AccessDenied and ZombieProcess give `ad_value`, NoSuchProcess (the process is gone) raises.
    """

    def __init__(
        self,
        info: dict[str, Any],
        connections: list[pconn] | Exception | None = None,
    ) -> None:
        self.info = info
        self.pid = info["pid"]
        self._connections = connections or []

    def as_dict(self, attrs: list[str], ad_value: Any) -> dict[str, Any]:
        found = {}
        for attr in attrs:
            value = self.info.get(attr, ad_value)
            if isinstance(value, psutil.AccessDenied | psutil.ZombieProcess):
                value = ad_value
            elif isinstance(value, Exception):
                raise value
            found[attr] = value
        return found

    def net_connections(self, kind: str) -> list[pconn]:
        assert kind == "tcp"
        if isinstance(self._connections, Exception):
            raise self._connections
        return self._connections


def info(pid: int, username: Any, cmdline: Any, name: Any = "p") -> dict[str, Any]:
    """One process's fields as psutil reads them (a value, or the exception reading it raises)."""
    return {"pid": pid, "create_time": 1000.0 + pid, "username": username, "cmdline": cmdline, "name": name}  # fmt: skip


def collector(
    platform: str, *procs: FakeProcess, sconns: list[sconn] | None = None
) -> PsutilCollector:
    return PsutilCollector(platform, lambda: iter(procs), lambda: list(sconns or []))  # fmt: skip


def test_linux_skips_kernel_threads_and_keeps_arguments_as_they_are() -> None:
    """Linux: a kernel thread (no command line) is not sent; inner spaces, one-string titles
    and non-ASCII users and arguments stay as they are; a hidden command line sends the name."""
    found = collector(
        "linux",
        FakeProcess(info(1, "root", ["/sbin/init", "splash"])),
        FakeProcess(info(2, "root", [], name="kthreadd")),
        FakeProcess(
            info(4242, "jürgen", ["/usr/bin/python3", "-c", "print('a  b')", '--flag="x y"'])
        ),
        FakeProcess(info(5150, "www-data", ["nginx: worker process"])),
        FakeProcess(info(7007, "ユーザー", ["/usr/bin/less", "ファイル.txt"])),
        FakeProcess(info(8008, "svc-backup", psutil.AccessDenied(8008), name="backupd")),
        FakeProcess(info(9009, "root", ["", " "])),  # a cleared argv
    ).processes()
    assert {p.pid: (p.user, p.cmdl) for p in found} == {
        1: ("root", "/sbin/init splash"),
        4242: ("jürgen", "/usr/bin/python3 -c print('a  b') --flag=\"x y\""),
        5150: ("www-data", "nginx: worker process"),
        7007: ("ユーザー", "/usr/bin/less ファイル.txt"),
        8008: ("svc-backup", "backupd"),
    }
    assert found[0].key == (1, 1001.0)


def test_macos_sends_the_name_of_another_users_process_and_skips_the_unreadable() -> None:
    """macOS: AccessDenied on another user's arguments, or on a zombie's, leaves the name; a
    process whose user is hidden too, and one gone between listing and reading, are skipped."""
    denied = psutil.AccessDenied(88)
    found = collector(
        "darwin",
        FakeProcess(info(88, "_windowserver", denied, name="WindowServer")),
        FakeProcess(info(90, denied, denied, name="launchd_helper")),
        FakeProcess(info(91, "zoë", psutil.ZombieProcess(91), name="git")),
        FakeProcess(info(92, psutil.NoSuchProcess(92), ["sleep", "1"])),
        FakeProcess(info(93, "zoë", psutil.NoSuchProcess(93))),
        FakeProcess(info(501, "zoë", ["/Applications/Safari.app/Contents/MacOS/Safari"])),
    ).processes()
    assert [(p.pid, p.user, p.cmdl) for p in found] == [
        (88, "_windowserver", "WindowServer"),
        (91, "zoë", "git"),
        (501, "zoë", "/Applications/Safari.app/Contents/MacOS/Safari"),
    ]


def test_windows_drops_the_domain_and_quotes_arguments_as_windows_does() -> None:
    """Windows: DOMAIN\\user becomes user; arguments with spaces are quoted back into one command
    line; the System Idle Process (no command line) and a denied SYSTEM process are skipped."""
    found = collector(
        "win32",
        FakeProcess(info(0, "NT AUTHORITY\\SYSTEM", [], name="System Idle Process")),
        FakeProcess(info(4, psutil.AccessDenied(4), psutil.AccessDenied(4), name="System")),
        FakeProcess(
            info(1200, "CONTOSO\\jürgen", ["C:\\Program Files\\App\\app.exe", "--name", "a b"])
        ),
        FakeProcess(info(1300, "DESKTOP-1\\ユーザー", ["notepad.exe", "C:\\メモ.txt"])),
    ).processes()
    assert [(p.user, p.cmdl) for p in found] == [
        ("jürgen", '"C:\\Program Files\\App\\app.exe" --name "a b"'),
        ("ユーザー", "notepad.exe C:\\メモ.txt"),
    ]
    assert command_line(["C:\\a b\\x.exe"], None, "linux") == "C:\\a b\\x.exe"


def test_connections_are_established_with_a_remote_end_and_ipv4_mapped_unmapped() -> None:
    """Only ESTABLISHED sockets with a remote end; IPv4-mapped IPv6 becomes dotted IPv4, IPv6
    stays (without its zone); the owner is the listed process's user where the OS names the pid."""
    sconns = [
        sconn(3, socket.AF_INET, TCP, addr("10.0.0.5", 54321), addr("93.184.216.34", 443), ESTABLISHED, 4242),
        sconn(4, socket.AF_INET, TCP, addr("0.0.0.0", 22), (), psutil.CONN_LISTEN, 1),
        sconn(5, socket.AF_INET, TCP, addr("10.0.0.5", 5000), (), ESTABLISHED, 4242),
        sconn(6, socket.AF_INET6, TCP, addr("::ffff:10.0.0.5", 40000), addr("::ffff:192.0.2.7", 8443), ESTABLISHED, None),
        sconn(7, socket.AF_INET6, TCP, addr("fe80::1%eth0", 40001), addr("2001:db8::7", 443), ESTABLISHED, 4242),
        sconn(8, socket.AF_INET, TCP, addr("10.0.0.5", 40002), addr("10.0.0.9", 80), psutil.CONN_TIME_WAIT, None),
    ]  # fmt: skip
    source = collector("linux", FakeProcess(info(4242, "jürgen", ["curl"])), sconns=sconns)
    source.processes()
    found = source.connections()
    assert found == [
        Connection("10.0.0.5", 54321, "93.184.216.34", 443),
        Connection("10.0.0.5", 40000, "192.0.2.7", 8443),
        Connection("fe80::1", 40001, "2001:db8::7", 443),
    ]
    assert [c.user for c in found] == ["jürgen", None, "jürgen"]


def test_macos_without_root_reports_the_connections_of_readable_processes() -> None:
    """macOS lists all sockets to root only: on AccessDenied the collector asks each readable
    process, skipping those that deny it or have gone."""

    def denied() -> list[sconn]:
        raise psutil.AccessDenied(None)

    mine = [pconn(9, socket.AF_INET6, TCP, addr("::ffff:192.168.1.2", 50000), addr("::ffff:17.253.144.10", 443), ESTABLISHED)]  # fmt: skip
    procs = [
        FakeProcess(info(501, "zoë", ["/Applications/Safari.app/Contents/MacOS/Safari"]), mine),
        FakeProcess(
            info(88, "_windowserver", psutil.AccessDenied(88), name="WindowServer"),
            psutil.AccessDenied(88),
        ),
        FakeProcess(info(502, "zoë", ["sleep", "9"]), psutil.NoSuchProcess(502)),
    ]
    source = PsutilCollector("darwin", lambda: iter(procs), denied)
    source.processes()
    assert [(c, c.user) for c in source.connections()] == [
        (Connection("192.168.1.2", 50000, "17.253.144.10", 443), "zoë")
    ]


class ListedCollector:
    """A Collector whose rounds are given lists."""

    def __init__(self, rounds: list[tuple[list[Process], list[Connection]]]) -> None:
        self._rounds: Iterator[tuple[list[Process], list[Connection]]] = iter(rounds)
        self._connections: list[Connection] = []

    def processes(self) -> list[Process]:
        processes, self._connections = next(self._rounds)
        return processes

    def connections(self) -> list[Connection]:
        return self._connections


def test_host_agent_reports_only_what_is_new_and_what_the_contract_takes() -> None:
    """The first scan is the baseline; later scans report only new processes and connections,
    a reused pid with a new start time is new; an IPv6 connection is not sent."""
    init = Process("root", 1, 1.0, "/sbin/init")
    ssh = Connection("10.0.0.5", 54321, "93.184.216.34", 443)
    vim = Process("bob", 9999, 50.0, "/usr/bin/vim notes.txt")
    reused = Process("zoë", 1234, 60.0, "less ファイル")
    v6 = Connection("fe80::1", 40001, "2001:db8::7", 443)
    web = Connection("10.0.0.5", 54400, "192.0.2.7", 8443)
    agent = HostAgent(
        "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
        ListedCollector([
            ([init, Process("bob", 1234, 2.0, "top")], [ssh]),
            ([init, vim, reused], [ssh, v6, web]),
            ([init, vim, reused], [ssh, v6, web]),
        ]),
    )  # fmt: skip
    assert agent.scan() == ([], [])
    processes, connections = agent.scan()
    assert processes == [vim, reused]
    assert connections == [v6, web]
    doc = agent.submission(processes, connections, "2026-11-28T11:00:00")
    parsed = parse_submission(encode(doc))
    assert isinstance(parsed, ParsedSubmission)
    assert [e.data for e in parsed.events] == [
        {"cmdl": "/usr/bin/vim notes.txt", "user": "bob"},
        {"cmdl": "less ファイル", "user": "zoë"},
        {"source_ip": "10.0.0.5", "destination_ip": "192.0.2.7", "destination_port": 8443},
    ]
    assert agent.scan() == ([], [])


IOREG = """+-o MacBookPro18,3  <class IOPlatformExpertDevice, id 0x100000110, registered, matched, active, busy 0 (2 ms), retain 37>
    {
      "IOPlatformSerialNumber" = "C02XK1Y2MD6R"
      "IOPlatformUUID" = "564D1A2B-3C4D-5E6F-7A8B-9C0D1E2F3A4B"
      "model" = <"MacBookPro18,3">
    }
"""


def no_file(path: Path) -> str:
    raise FileNotFoundError(path)


def no_command(argv: list[str]) -> str:
    raise FileNotFoundError(argv[0])


def no_registry() -> str:
    raise OSError("no such key")


def test_each_platform_reads_its_own_machine_id() -> None:
    """Linux: /etc/machine-id, else D-Bus's; macOS: ioreg's IOPlatformUUID; Windows: the
    registry's MachineGuid; None where the platform's source fails or is empty."""
    files = {Path("/var/lib/dbus/machine-id"): "4c4c4544004d3610804cb4c04f4d3232\n"}
    linux = MachineReaders(read_text=lambda p: files[p] if p in files else no_file(p))
    assert machine_id("linux", linux) == "4c4c4544004d3610804cb4c04f4d3232"
    assert machine_id("linux", MachineReaders(read_text=no_file)) is None
    assert machine_id("linux", MachineReaders(read_text=lambda p: "\n")) is None
    ioreg: list[list[str]] = []

    def run(argv: list[str]) -> str:
        ioreg.append(argv)
        return IOREG

    assert machine_id("darwin", MachineReaders(run=run)) == "564D1A2B-3C4D-5E6F-7A8B-9C0D1E2F3A4B"
    assert ioreg == [["/usr/sbin/ioreg", "-rd1", "-c", "IOPlatformExpertDevice"]]
    assert machine_id("darwin", MachineReaders(run=no_command)) is None
    assert machine_id("darwin", MachineReaders(run=lambda argv: "{}")) is None
    guid = "6f1d2c3b-4a59-4e68-8a7b-9c0d1e2f3a4b"
    assert machine_id("win32", MachineReaders(machine_guid=lambda: guid + "\n")) == guid
    assert machine_id("win32", MachineReaders(machine_guid=no_registry)) is None


def test_device_id_is_stable_per_machine(tmp_path: Path) -> None:
    """The same machine id gives the same device UUID, another machine another; the state file
    is not touched when the OS has an id."""
    state = tmp_path / "host.json"
    mac = MachineReaders(run=lambda argv: IOREG)
    first = device_id(state, "darwin", mac)
    assert device_id(state, "darwin", mac) == first
    assert uuid.UUID(first).version == 5
    other = device_id(state, "win32", MachineReaders(machine_guid=lambda: "other"))
    assert other != first
    assert not state.exists()


def test_device_id_falls_back_to_a_generated_id_kept_in_the_state_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a machine id: a warning, and a random id written to the state file and read back
    on the next start; an unreadable state file gets a new one."""
    state = tmp_path / "state" / "host.json"
    none = MachineReaders(read_text=no_file, run=no_command, machine_guid=no_registry)
    with caplog.at_level(logging.WARNING, logger="sensor_fleet.host"):
        generated = device_id(state, "linux", none)
    assert uuid.UUID(generated).version == 4
    assert json.loads(state.read_text(encoding="utf-8")) == {"device_id": generated}
    assert f"device id {generated} is kept in {state}" in caplog.text
    assert device_id(state, "win32", none) == generated
    state.write_text("{not json", encoding="utf-8")
    renewed = device_id(state, "darwin", none)
    assert renewed != generated
    assert json.loads(state.read_text(encoding="utf-8")) == {"device_id": renewed}


def test_state_file_defaults_to_each_platforms_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """XDG_STATE_HOME on Linux, Application Support on macOS, LOCALAPPDATA on Windows."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "AppData"))
    assert default_state_file("linux") == tmp_path / "state" / "sensor-fleet" / "host.json"
    assert default_state_file("darwin") == (
        tmp_path / "Library" / "Application Support" / "sensor-fleet" / "host.json"
    )
    assert default_state_file("win32") == tmp_path / "AppData" / "sensor-fleet" / "host.json"


def test_a_device_id_that_cannot_be_kept_stops_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No machine id and an unwritable state file: a start-up error naming the file, not a new
    device at every start."""
    monkeypatch.setattr(host, "machine_id", lambda platform, readers=None: None)
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    with pytest.raises(ToolError, match=r"cannot be kept in .*a-file/host\.json"):
        agent_device_id(blocker / "host.json")
