"""The bench's loading of a signed backlog into the emulator."""

from __future__ import annotations

from devworld.bench.workloads import BenchKeys, fleet_backlog, load
from devworld.emulator import Emulator, World
from event_processor.auth.keyset import KeySet
from event_processor.contract.signing import SIGNATURE_ATTRIBUTE, Envelope
from tests.helpers import drain_queue


def test_a_signed_backlog_arrives_with_each_body_s_signature(
    emulator: Emulator, world: World
) -> None:
    """Every body is in the queue once, carrying the attribute that verifies it."""
    submissions = fleet_backlog(25, seed=11)
    bodies = [body for _, body in submissions]
    keys = BenchKeys.new()
    load(emulator, world, bodies, keys.sign(submissions))
    messages = drain_queue(emulator, world.queue_url)
    assert sorted(m["Body"] for m in messages) == sorted(bodies)
    key_set = KeySet.parse(keys.text)
    for message in messages:
        assert set(message["MessageAttributes"]) == {SIGNATURE_ATTRIBUTE}
        assert isinstance(key_set.verify(message["MessageAttributes"], message["Body"]), Envelope)
