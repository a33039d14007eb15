"""The logic that bounds a redrive or a peek by its start, and what a redrive says (pure logic:
no emulator)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from event_processor.auth.keyset import KeySet
from event_processor.contract.rules import Reason
from event_processor.contract.signing import signature_attributes
from event_processor.tools import peek, recheck, redrive_report, tally
from event_processor.tools.dead_letters import Letter
from event_processor.tools.text import body_preview
from tests.factories import encode, submission

DATE = "Thu, 03 Dec 2026 11:35:02 GMT"
DATE_MS = int(datetime(2026, 12, 3, 11, 35, 2, tzinfo=UTC).timestamp() * 1000)
MASTER = bytes(range(32))
DEVICE = "93552c93-6e6f-48fe-bbf9-6ba6ac20c120"


class Attributes:
    """GetQueueAttributes as SQS answers it, with or without a Date header."""

    def __init__(self, date: str | None) -> None:
        self.date = date

    def get_queue_attributes(self, **_: Any) -> dict[str, Any]:
        headers = {} if self.date is None else {"date": self.date}
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": "86",
                "ApproximateNumberOfMessagesNotVisible": "2",
            },
            "ResponseMetadata": {"HTTPHeaders": headers},
        }


def letter(
    body: str = "x", *, sent_ms: int | None = None, attributes: dict[str, Any] | None = None
) -> Letter:
    system = {} if sent_ms is None else {"SentTimestamp": str(sent_ms)}
    return Letter.from_message(
        {
            "MessageId": str(uuid.uuid4()),
            "ReceiptHandle": "rh",
            "Body": body,
            "MessageAttributes": attributes or {},
            "Attributes": system,
        }
    )


def test_start_is_sqs_date_plus_the_margin() -> None:
    """The start bound is SQS's Date header plus the margin; the host's clock plays no part."""
    start = peek.start_of(Attributes(DATE), "url", clock=lambda: 0.0)
    assert start.sent_by_ms == DATE_MS + peek.START_MARGIN_MS
    assert (start.approximate_visible, start.approximate_not_visible) == (86, 2)


def test_start_without_a_date_uses_the_host_clock_with_a_wider_margin() -> None:
    """No (or an unparsable) Date header: the host's clock, with the host's margin."""
    for date in (None, "not a date"):
        start = peek.start_of(Attributes(date), "url", clock=lambda: 1_000.0)
        assert start.sent_by_ms == 1_000_000 + peek.HOST_CLOCK_MARGIN_MS


def test_start_holds_what_was_sent_by_it() -> None:
    """A letter sent at or before the bound was there; after it, not; no timestamp: assumed so."""
    start = peek.Start(sent_by_ms=DATE_MS, approximate_visible=1, approximate_not_visible=0)
    assert start.holds(letter(sent_ms=DATE_MS))
    assert not start.holds(letter(sent_ms=DATE_MS + 1))
    assert start.holds(letter())


def test_idle_ends_a_scan_after_receives_without_a_letter_from_before_the_start() -> None:
    """Receives of later letters only end the scan complete; re-read ones end it incomplete;
    any letter from before the start starts the count again."""
    idle = peek.Idle(3)
    idle.record(fresh=0, later=4)
    idle.record(fresh=0, later=1)
    idle.record(fresh=1, later=9)
    assert not idle.done
    for _ in range(3):
        idle.record(fresh=0, later=2)
    assert (idle.done, idle.complete) == (True, True)

    stale = peek.Idle(3)
    stale.record(fresh=0, later=1)
    stale.record(fresh=0, later=0)
    stale.record(fresh=0, later=0)
    assert (stale.done, stale.complete) == (True, False)


def test_summary_names_the_rejected_again_and_does_not_invite_another_run() -> None:
    """A finished run with re-rejections says the cause is not fixed, with counts by reason."""
    summary = tally.RedriveSummary(dry_run=False, moved=12, read=12, complete=True)
    summary.rejected_again.update({"invalid_body": 10, "signature_invalid": 2})
    text = redrive_report.text(summary)
    assert "rejected again: 12 (invalid_body: 10, signature_invalid: 2)" in text
    assert "the cause is not fixed" in text
    assert "run again" not in text
    assert redrive_report.as_json(summary)["rejected_again_by_reason"] == {
        "invalid_body": 10,
        "signature_invalid": 2,
    }


def test_an_interrupted_summary_says_what_is_left() -> None:
    """Interrupted: about how many letters from before the start were not looked at."""
    start = peek.Start(sent_by_ms=0, approximate_visible=86, approximate_not_visible=0)
    summary = tally.RedriveSummary(dry_run=False, start=start, moved=30, read=36)
    summary.interrupted = True
    assert summary.left == 50
    assert "interrupted: ~50 letters from before the start not looked at" in redrive_report.text(
        summary
    )
    assert redrive_report.as_json(summary)["left"] == 50


def test_take_counts_what_a_run_moves_skips_and_stops_before() -> None:
    """The one count of the real run and the dry run: submissions of the reason move, event
    letters and other reasons are skipped (and read), and the one past the room is not read."""
    summary = tally.RedriveSummary(dry_run=False)
    body = letter("x", attributes={"reason": {"DataType": "String", "StringValue": "invalid_body"}})
    other = letter(
        "y", attributes={"reason": {"DataType": "String", "StringValue": "not_an_object"}}
    )

    assert summary.take(body, "invalid_body", room=1) is tally.Take.MOVE
    assert summary.take(other, "invalid_body", room=0) is tally.Take.SKIP, "skips need no room"
    assert summary.take(body, None, room=0) is tally.Take.BEYOND
    assert summary.take(body, None, room=None) is tally.Take.MOVE
    assert (summary.read, summary.limited, dict(summary.skipped_other)) == (
        3,
        True,
        {"not_an_object": 1},
    )


def test_contract_check_is_the_daemons() -> None:
    """Garbage is invalid_body, a valid body publishes (its bad events counted), and with a key
    set an unsigned body is rejected under enforce and published under monitor."""
    check = recheck.ContractCheck()
    assert check(letter("not json")).name == Reason.INVALID_BODY.value
    bad_event = submission({"new_process": [{}], "network_connection": []})
    verdict = check(letter(encode(bad_event)))
    assert (verdict.name, verdict.events_rejected) == (recheck.PUBLISH, {"missing_field": 1})

    keys = KeySet({"k1": MASTER})
    body = encode(submission(device_id=DEVICE))
    attributes = signature_attributes(keys.device_key("k1", DEVICE), "k1", DEVICE, body)
    assert recheck.ContractCheck(keys)(letter(body, attributes=attributes)).name == "publish"
    assert recheck.ContractCheck(keys)(letter(body)).name == "signature_missing"
    assert recheck.ContractCheck(keys, enforce=False)(letter(body)).name == "publish"


def test_body_preview_decodes_base64_and_says_so() -> None:
    """A base64 body is shown decoded (labelled); anything else as it is, escaped."""
    assert body_preview(encode({"a": 1})) == '(base64-decoded) {"a": 1}'
    assert body_preview('{"a": 1}') == '{"a": 1}'
    assert body_preview("line\nbreak") == "line\\nbreak"
    assert body_preview("not base64! " * 50, 10) == "not base64..."
