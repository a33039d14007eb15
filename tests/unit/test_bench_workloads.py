"""The bench's signed backlog: what the daemon under AUTH_MODE=enforce will accept."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson

from devworld.bench.workloads import BenchKeys, fleet_backlog
from event_processor.auth.keyset import KeySet
from event_processor.contract.signing import Envelope


def test_each_body_is_signed_by_the_device_that_sent_it(tmp_path: Path) -> None:
    """Every signature holds under the key set the daemon reads from the written file, and
    names the sending device, which is the body's own unless that field is the broken one."""
    submissions = fleet_backlog(300, seed=3)
    keys = BenchKeys.new()
    key_set = KeySet.parse(keys.write(tmp_path).read_bytes())
    for (device_id, body), attributes in zip(submissions, keys.sign(submissions), strict=True):
        verdict = key_set.verify(attributes, body)
        assert isinstance(verdict, Envelope)
        assert verdict.device_id == device_id
        assert orjson.loads(base64.b64decode(body))["device_id"] in (device_id, "not-an-uuid")


def test_another_key_set_does_not_verify_them() -> None:
    """A fresh master key per BenchKeys: the bench's signatures are not a constant."""
    submissions = fleet_backlog(5, seed=3)
    other = KeySet.parse(BenchKeys.new().text)
    for (_, body), attributes in zip(submissions, BenchKeys.new().sign(submissions), strict=True):
        assert not isinstance(other.verify(attributes, body), Envelope)
