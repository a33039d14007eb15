"""How fast a tool run goes and how often it says so, on an injected clock (pure logic: no
emulator, no sleep)."""

from __future__ import annotations

import io
import threading

from event_processor.tools import pacing, redrive_report, tally


def test_pacer_spaces_batches_on_its_clock() -> None:
    """Pacer: message i is due at start + i / rate; batches are at most one second's worth."""
    now = [100.0]
    waits: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            assert timeout is not None
            waits.append(round(timeout, 6))
            now[0] += timeout
            return False

    pacer = pacing.Pacer(2.5, Stop(), clock=lambda: now[0])
    assert pacer.batch_size == 2
    for _ in range(3):
        assert pacer.wait(2)
        pacer.sent(2)
    # Messages 0..5 due at 0, 0.4, ..., 2.0 s: each batch waits for its last message.
    assert waits == [0.4, 0.8, 0.8]
    assert pacing.Pacer(None, threading.Event()).batch_size == 10
    assert pacing.Pacer(0.5, threading.Event()).batch_size == 1


def test_progress_prints_every_interval_on_its_clock() -> None:
    """A progress line once the interval has passed on the injected clock, not before; none
    when disabled."""
    now = [0.0]
    err = io.StringIO()
    summary = tally.RedriveSummary(dry_run=False, moved=3, read=4)
    progress = pacing.Progress(
        lambda: redrive_report.progress_line(summary),
        err,
        enabled=True,
        clock=lambda: now[0],
        every_s=5,
    )
    progress.tick()
    now[0] = 5.0
    progress.tick()
    progress.tick()
    assert (
        err.getvalue() == "redrive: read 4 of ~0: moved 3, rejected again 0, skipped 0, failed 0\n"
    )
    quiet = io.StringIO()
    silent = pacing.Progress(
        lambda: redrive_report.progress_line(summary),
        quiet,
        enabled=False,
        clock=lambda: now[0],
        every_s=0,
    )
    silent.tick()
    assert quiet.getvalue() == ""
