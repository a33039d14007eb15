"""The fleet's pure parts: host parsers on recorded samples, and the generator's shape."""

from __future__ import annotations

import random
from pathlib import Path

from event_processor.models import Submission, parse_submission
from sensor_fleet.generator import device_ids, encode, make_submission
from sensor_fleet.host import Connection, HostAgent, parse_proc_net_tcp, parse_ps

DATA = Path(__file__).parent.parent / "data"


def test_parse_ps_keeps_spaces_and_non_ascii_users() -> None:
    """Commands keep their inner spaces; non-ASCII and truncated users survive; junk is skipped."""
    processes = parse_ps((DATA / "ps_sample.txt").read_text(encoding="utf-8"))
    by_pid = {p.pid: p for p in processes}
    assert sorted(by_pid) == [1, 2, 4242, 5150, 6001, 7007]
    assert by_pid[1].args == "/sbin/init splash"
    assert by_pid[1].start == "Nov 27"
    assert by_pid[4242].user == "jürgen"
    assert by_pid[4242].args == "/usr/bin/python3 -c print('a  b')   --flag=\"x y\""
    assert by_pid[5150].args == "nginx: worker process"
    assert by_pid[6001].user == "svc-back+"
    assert by_pid[7007].user == "ユーザー"


def test_parse_proc_net_tcp_reports_established_ipv4() -> None:
    """Only ESTABLISHED rows, with little-endian hex decoded to dotted quads and ports."""
    connections = parse_proc_net_tcp((DATA / "proc_net_tcp_sample.txt").read_text())
    assert connections == [
        Connection("10.0.0.5", 54321, "93.184.216.34", 443),
        Connection("127.0.0.1", 8080, "127.0.0.1", 50000),
    ]


def test_host_agent_reports_only_what_is_new() -> None:
    """The first scan is the baseline; later scans report only new processes and connections."""
    ps = (DATA / "ps_sample.txt").read_text(encoding="utf-8")
    tcp = (DATA / "proc_net_tcp_sample.txt").read_text()
    agent = HostAgent("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d")
    assert agent.scan(ps, tcp) == ([], [])
    extra = "bob       9999  0.0  0.0   1000   100 ?        S    11:00:00 00:00:00 /usr/bin/vim notes.txt\n"
    processes, connections = agent.scan(ps + extra, tcp)
    assert [p.pid for p in processes] == [9999]
    assert connections == []
    doc = agent.submission(processes, connections, "2026-11-28T11:00:00")
    parsed = parse_submission(encode(doc))
    assert isinstance(parsed, Submission)
    assert [e.data for e in parsed.events] == [{"cmdl": "/usr/bin/vim notes.txt", "user": "bob"}]


def test_generator_matches_the_fleet_shape() -> None:
    """3-5 events of each type; with probability 0 every submission is fully valid."""
    rng = random.Random(3)
    [device] = device_ids(1)
    for _ in range(50):
        doc = make_submission(rng, device, invalid_probability=0.0)
        assert 3 <= len(doc["events"]["new_process"]) <= 5
        assert 3 <= len(doc["events"]["network_connection"]) <= 5
        parsed = parse_submission(encode(doc))
        assert isinstance(parsed, Submission)
        assert not parsed.rejected
        assert parsed.device_id == device


def test_generator_breaks_fields_at_the_asked_rate() -> None:
    """At probability 1 every breakable field is broken in one of the documented ways."""
    doc = make_submission(random.Random(1), device_ids(1)[0], invalid_probability=1.0)
    assert doc["submission_id"] == "not-an-uuid"
    assert all(p["cmdl"] is None for p in doc["events"]["new_process"])
    assert all(c["destination_ip"] == "not-an-ip" for c in doc["events"]["network_connection"])
