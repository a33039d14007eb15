"""`dlq inspect`'s scan: count the DLQ's dead letters, and the rejected events they list, by
reason, with examples, consuming nothing (docs/operations.md).
"""

from __future__ import annotations

import threading
from typing import Any, TextIO

from event_processor.tools import peek
from event_processor.tools.tally import InspectReport


def inspect_dlq(
    sqs: Any,
    dlq_url: str,
    *,
    max_messages: int = 1000,
    examples: int = 3,
    stop: threading.Event | None = None,
    err: TextIO | None = None,
) -> InspectReport:
    """Read up to `max_messages` DLQ messages without consuming any, and count them by reason.

    Pages through the DLQ (`peek`: each page hidden while the scan runs, everything released
    at the end, nothing deleted), reading what it held at the start: letters that arrive
    meanwhile are held and released too but not counted, and the scan ends once only such
    letters come, however fast the daemon writes them. Messages are counted by their `reason`
    attribute and kind; the rejected events that event letters list are counted too, by each
    event's own reason. `stop` set (a signal) ends the scan early, as `interrupted`.
    """
    start = peek.start_of(sqs, dlq_url)
    report = InspectReport(
        start=start, dlq_url=dlq_url, max_messages=max_messages, examples_per_reason=examples
    )
    with peek.peek(sqs, dlq_url, stop=stop, err=err, start=start) as scan:
        for letter in scan:
            if not report.count(letter):
                break
    report.finish(scan)
    return report
