"""The fleet's pure parts: the generator's shape, the signers and the sender's batching (the
host agent's: test_host.py)."""

from __future__ import annotations

import base64
import itertools
import json
import random

import pytest

from event_processor.auth.keyset import KeySet
from event_processor.contract.parse import ParsedSubmission, parse_submission
from event_processor.contract.signing import Envelope
from event_processor.tools import fifo
from event_processor.tools.aws import UsageError
from event_processor.tools.keys import enrolment
from sensor_fleet.generator import (
    device_ids,
    encode,
    fleet_load,
    fleet_submissions,
    make_submission,
)
from sensor_fleet.sender import Sender, _batches
from sensor_fleet.signer import DeviceSigner, FleetSigner


def test_generator_matches_the_fleet_shape() -> None:
    """3-5 events of each type; with probability 0 every submission is fully valid."""
    rng = random.Random(3)
    [device] = device_ids(1)
    for _ in range(50):
        doc = make_submission(rng, device, invalid_probability=0.0)
        assert 3 <= len(doc["events"]["new_process"]) <= 5
        assert 3 <= len(doc["events"]["network_connection"]) <= 5
        parsed = parse_submission(encode(doc))
        assert isinstance(parsed, ParsedSubmission)
        assert not parsed.rejected
        assert parsed.device_id == device


def test_generator_breaks_fields_at_the_asked_rate() -> None:
    """At probability 1 every breakable field is broken in one of the documented ways."""
    doc = make_submission(random.Random(1), device_ids(1)[0], invalid_probability=1.0)
    assert doc["submission_id"] == "not-an-uuid"
    assert all(p["cmdl"] is None for p in doc["events"]["new_process"])
    assert all(c["destination_ip"] == "not-an-ip" for c in doc["events"]["network_connection"])


# --- signing -----------------------------------------------------------------------------------

DEVICE = "93552c93-6e6f-48fe-bbf9-6ba6ac20c120"
TWO_KEYS = KeySet({"2026-11-02-9c1f0a": bytes(range(32)), "2026-12-03-5f2a9c": bytes(32)})


def test_fleet_signer_signs_with_the_key_keys_derive_issues() -> None:
    """Each device signs with the key `keys derive` would enrol it with, and the daemon's check
    accepts it."""
    signer = FleetSigner(TWO_KEYS, "2026-12-03-5f2a9c")
    issued = enrolment(TWO_KEYS, DEVICE, "2026-12-03-5f2a9c")
    assert signer.device(DEVICE).device_key == base64.b64decode(issued["device_key"])
    body = encode({"device_id": DEVICE})
    verdict = TWO_KEYS.verify(signer.attributes(DEVICE, body), body)
    assert isinstance(verdict, Envelope)
    assert (verdict.device_id, verdict.key_id) == (DEVICE, "2026-12-03-5f2a9c")


def test_fleet_signer_needs_a_key_id_when_the_set_has_several() -> None:
    """As `keys derive`: no --key-id with two keys, or an id not in the set, is a usage error
    naming the ids; with one key, that key signs."""
    with pytest.raises(UsageError, match="2026-11-02-9c1f0a, 2026-12-03-5f2a9c"):
        FleetSigner(TWO_KEYS)
    with pytest.raises(UsageError, match="k9 is not in the key set"):
        FleetSigner(TWO_KEYS, "k9")
    assert FleetSigner(KeySet({"only": bytes(32)})).key_id == "only"


def test_a_broken_device_id_is_still_signed_as_the_sensor() -> None:
    """A body whose device_id the generator broke is signed with the sending device's id, so
    the contract rejects it, not the signature."""
    doc = make_submission(random.Random(1), DEVICE, invalid_probability=1.0)
    assert doc["device_id"] == "not-an-uuid"
    body = encode(doc)
    verdict = TWO_KEYS.verify(
        FleetSigner(TWO_KEYS, "2026-11-02-9c1f0a").attributes(DEVICE, body), body
    )
    assert isinstance(verdict, Envelope)
    assert verdict.device_id == DEVICE


def test_device_signer_reads_an_enrolment_and_never_shows_its_key() -> None:
    """`keys derive`'s JSON makes a signer of that device; its repr and a bad enrolment's error
    hold no key."""
    issued = enrolment(TWO_KEYS, DEVICE, "2026-11-02-9c1f0a")
    signer = DeviceSigner.from_enrolment(json.dumps(issued))
    body = "eyJ9"
    verdict = TWO_KEYS.verify(signer.attributes(body), body)
    assert isinstance(verdict, Envelope)
    assert (verdict.device_id, verdict.key_id) == (DEVICE, "2026-11-02-9c1f0a")
    assert issued["device_key"] not in repr(signer)
    broken = json.dumps({**issued, "device_key": issued["device_key"] + "!"})
    with pytest.raises(ValueError, match="not an enrolment") as error:
        DeviceSigner.from_enrolment(broken)
    assert issued["device_key"] not in str(error.value)


def test_fleet_submissions_are_fleet_load_with_their_senders() -> None:
    """load's submissions with their senders are fleet_load's, in order, and each sender is a
    fleet device (the body's device_id unless broken)."""
    devices = set(device_ids(5, seed=7))
    with_senders = list(itertools.islice(fleet_submissions(7, 5, 0.3), 200))
    docs = list(itertools.islice(fleet_load(7, 5, 0.3), 200))
    strip = [{k: v for k, v in d.items() if k != "time_created"} for d in docs]
    assert [{k: v for k, v in d.items() if k != "time_created"} for _, d in with_senders] == strip
    assert {device for device, _ in with_senders} <= devices
    assert all(d["device_id"] in {device, "not-an-uuid"} for device, d in with_senders)
    assert any(d["device_id"] == "not-an-uuid" for _, d in with_senders)


def test_batches_count_attributes_against_the_size_limit() -> None:
    """Two messages whose bodies fit one 256 KiB batch go in two when their attributes do not."""
    body = "x" * (128 * 1024 - 50)
    attributes = {"sensor-signature": {"DataType": "String", "StringValue": "v" * 100}}
    assert len(_batches([(body, None, None), (body, None, None)])) == 1
    assert len(_batches([(body, attributes, None), (body, attributes, None)])) == 2


def test_fifo_groups_and_deduplication_ids_of_bodies() -> None:
    """A body's group is the sending device, else the device it names, else the fixed group;
    its deduplication id is its SHA-256, the same for the same body, different for another."""
    device = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
    body = encode({"submission_id": "not-an-uuid", "device_id": device, "events": {}})
    assert fifo.group_for(body, "sender-device") == "sender-device"
    assert fifo.group_for(body) == device
    assert fifo.group_for(json.dumps({"device_id": device})) == device  # plain JSON too
    assert fifo.group_for("not json at all") == fifo.UNKNOWN_DEVICE_GROUP
    assert fifo.group_for(encode({"device_id": "has a space"})) == fifo.UNKNOWN_DEVICE_GROUP
    assert fifo.group_for(encode({"device_id": "x" * 129})) == fifo.UNKNOWN_DEVICE_GROUP
    assert fifo.group_for(encode([1, 2])) == fifo.UNKNOWN_DEVICE_GROUP
    other = encode({"submission_id": "not-an-uuid", "device_id": device, "events": {"a": []}})
    assert fifo.body_deduplication_id(body) == fifo.body_deduplication_id(str(body))
    assert fifo.body_deduplication_id(body) != fifo.body_deduplication_id(other)
    assert fifo.usable_id(fifo.body_deduplication_id(body))
    assert fifo.is_fifo("https://sqs.eu-west-1.amazonaws.com/1/submissions.fifo")
    assert not fifo.is_fifo("https://sqs.eu-west-1.amazonaws.com/1/submissions")


class _FlakySqs:
    """SendMessageBatch that fails the given entry ids on the first call only."""

    def __init__(self, fail_first: set[str]) -> None:
        self.fail_first = fail_first
        self.calls: list[list[dict[str, object]]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, object]]) -> object:
        self.calls.append(Entries)
        failing = self.fail_first if len(self.calls) == 1 else set()
        return {
            "Successful": [{"Id": e["Id"]} for e in Entries if e["Id"] not in failing],
            "Failed": [{"Id": i, "Code": "InternalError"} for i in sorted(failing)],
        }


def test_a_partial_failure_on_a_fifo_queue_is_retried_and_counts_what_overtook() -> None:
    """The failed entry goes again with the same group and deduplication id; the later entry
    of its group that SQS took meanwhile is counted as having overtaken it, another group's
    is not."""
    sqs = _FlakySqs(fail_first={"0"})
    sender = Sender(sqs, "http://sqs.local/1/q.fifo", outage_ride_s=5)
    accepted = sender.send(["a", "b", "c"], devices=["d1", "d2", "d1"])
    assert accepted == ["a", "b", "c"]
    first, retry = sqs.calls
    assert [(e["MessageGroupId"], e["MessageDeduplicationId"]) for e in first] == [
        (g, fifo.body_deduplication_id(b)) for g, b in (("d1", "a"), ("d2", "b"), ("d1", "c"))
    ]
    assert retry == [first[0]]
    assert sender.overtaken == 1


def test_a_standard_queue_gets_no_group_or_deduplication_id() -> None:
    """Without ".fifo" in the URL the entries are as before: no FIFO parameters."""
    sqs = _FlakySqs(fail_first=set())
    Sender(sqs, "http://sqs.local/1/q").send(["a"], devices=["d1"])
    assert set(sqs.calls[0][0]) == {"Id", "MessageBody"}
