"""The congestion window's rules, call by call (pure logic: a fake clock, no sink, no network)."""

from __future__ import annotations

import pytest

from event_processor.constants import PUT_LATENCY_CUT_MIN, PUT_TARGET_LATENCY_S
from event_processor.pipeline.congestion import Change, CongestionWindow


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def window(max_records: int = 1000) -> tuple[CongestionWindow, Clock]:
    clock = Clock()
    return CongestionWindow(max_records, clock=clock), clock


def answer(
    cw: CongestionWindow,
    clock: Clock,
    size: int,
    *,
    accepted: int | None = None,
    throttled: int = 0,
    took_s: float = 0.25,  # exact in binary: elapsed times compare exactly
    window_limited: bool = True,
    outstanding: int | None = None,
    timed_out: bool = False,
) -> Change:
    """One call of `size` records sent now and answered `took_s` later."""
    sent_at = clock.now
    clock.now += took_s
    return cw.answered(
        size,
        size - throttled if accepted is None else accepted,
        throttled,
        sent_at,
        window_limited=window_limited,
        outstanding=size if outstanding is None else outstanding,
        timed_out=timed_out,
    )


def test_a_new_window_is_full_and_room_shrinks_with_what_is_in_flight() -> None:
    """The window opens at its maximum; sent records take room and returned ones give it back."""
    cw, _ = window(1000)
    assert cw.records == 1000
    assert cw.room() == 1000
    assert cw.sent(300) == 300
    assert cw.sent(200) == 500, "sent() says what is in flight with the call, itself included"
    assert cw.room() == 500
    cw.returned(300)
    assert (cw.in_flight, cw.room()) == (200, 800)


def test_a_window_at_its_floor_lets_one_record_go_only_when_none_is_out() -> None:
    """Cut to one record: one goes when nothing is in flight, none while it is out."""
    cw, clock = window(1000)
    assert answer(cw, clock, 10, accepted=0, throttled=10) is Change.THROTTLED_CUT
    assert cw.records == 1.0
    assert cw.room() == 1
    cw.sent(1)
    assert cw.room() == 0
    cw.returned(1)
    assert cw.room() == 1


def test_a_mostly_throttled_call_cuts_to_what_was_accepted_at_most_half() -> None:
    """Half or more throttled: the window drops to what the shards took, and never above half."""
    cw, clock = window(1000)
    assert answer(cw, clock, 500, throttled=400) is Change.THROTTLED_CUT
    assert cw.records == 100
    cw, clock = window(1000)
    assert answer(cw, clock, 500, throttled=250) is Change.THROTTLED_CUT
    assert cw.records == 250
    cw, clock = window(400)
    assert answer(cw, clock, 500, accepted=250, throttled=250) is Change.THROTTLED_CUT
    assert cw.records == 200, "half the window, though the shards took more"


def test_a_few_throttled_entries_neither_cut_nor_grow() -> None:
    """A minority throttled (a hot key) holds the window where it is."""
    cw, clock = window(1000)
    answer(cw, clock, 400, throttled=300)  # cut to 100
    assert answer(cw, clock, 100, throttled=10) is Change.HELD
    assert cw.records == 100


def test_one_cut_per_round_trip() -> None:
    """A call sent before the last cut was sized by the old window: its answer cuts nothing."""
    cw, clock = window(1000)
    early_sent_at = clock.now
    clock.now += 0.5
    assert answer(cw, clock, 500, throttled=400) is Change.THROTTLED_CUT
    assert cw.records == 100
    late = cw.answered(
        500, 0, 500, early_sent_at, window_limited=True, outstanding=1000, timed_out=False
    )
    assert late is Change.HELD
    assert cw.records == 100
    clock.now += 0.25
    assert answer(cw, clock, 100, throttled=80) is Change.THROTTLED_CUT, "one sent after it does"
    assert cw.records == 20


def test_a_slow_call_cuts_to_the_share_that_would_have_answered_in_time() -> None:
    """Twice the target latency with 400 in flight: the window becomes 200."""
    cw, clock = window(1000)
    change = answer(cw, clock, 100, took_s=2 * PUT_TARGET_LATENCY_S, outstanding=400)
    assert change is Change.SLOW_CUT
    assert cw.records == pytest.approx(200)


def test_a_very_slow_or_timed_out_call_cuts_by_the_largest_step_only() -> None:
    """Ten times too slow, or timed out: the window drops to PUT_LATENCY_CUT_MIN of it, no lower."""
    cw, clock = window(1000)
    assert answer(cw, clock, 500, took_s=10 * PUT_TARGET_LATENCY_S, outstanding=1000) is (
        Change.SLOW_CUT
    )
    assert cw.records == pytest.approx(1000 * PUT_LATENCY_CUT_MIN)
    cw, clock = window(1000)
    assert answer(cw, clock, 500, timed_out=True, outstanding=800) is Change.SLOW_CUT
    assert cw.records == pytest.approx(800 * PUT_LATENCY_CUT_MIN), "fast, but it timed out"


def test_a_slow_cut_never_goes_below_one_record() -> None:
    """However little was in flight, the window keeps room for one record."""
    cw, clock = window(1000)
    answer(cw, clock, 1, took_s=100 * PUT_TARGET_LATENCY_S, outstanding=1)
    assert cw.records == 1.0


def test_growth_is_half_a_call_and_only_when_the_window_held_the_call_back() -> None:
    """Calls the window limited grow it by half their size, up to the maximum; others do not."""
    cw, clock = window(1000)
    answer(cw, clock, 500, throttled=400)  # cut to 100
    assert answer(cw, clock, 100) is Change.GREW
    assert cw.records == 150
    assert answer(cw, clock, 100, window_limited=False) is Change.HELD
    assert cw.records == 150, "an idle sink proves nothing about capacity"
    for _ in range(20):
        answer(cw, clock, 500)
    assert cw.records == 1000


def test_a_call_at_the_target_latency_is_not_slow() -> None:
    """Exactly PUT_TARGET_LATENCY_S is within the target: the window grows, no cut."""
    cw, clock = window(1000)
    answer(cw, clock, 500, throttled=400)  # cut to 100
    assert answer(cw, clock, 100, took_s=PUT_TARGET_LATENCY_S) is Change.GREW
