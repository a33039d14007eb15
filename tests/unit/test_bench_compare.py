"""Enforce against off, as `make bench` and the in-process measure print it."""

from __future__ import annotations

import pytest

from devworld.bench.compare import Comparison, in_turn


def test_medians_and_round_differences_are_kept_apart() -> None:
    """The change of the medians and the median of each round's own change can differ: a
    round's two runs share the VM's load, the medians do not."""
    values = Comparison.of(off=[50.0, 60.0, 80.0], enforce=[53.0, 61.0, 70.0])
    assert values.change == pytest.approx(61.0 - 60.0)
    assert values.round_change == pytest.approx(1.0)  # median of +3, +1, -10
    assert values.relative_change == pytest.approx(61 / 60 - 1)
    assert values.round_relative_change == pytest.approx(1 / 60)  # median of +6%, +1.7%, -12.5%


def test_a_line_shows_both_medians_and_the_change() -> None:
    """A comparison line shows both medians, the change and the change by round."""
    values = Comparison.of(off=[2000.0, 3000.0], enforce=[1900.0, 3000.0])
    line = values.line("events/s", digits=0, relative=True)
    assert "2,500 → 2,450" in line
    assert "-2.0% (by round -2.5%)" in line
    assert Comparison.of([24.5], [27.0]).line("CPU µs/event").endswith("24.5 → 27.0  +2.5")


def test_rounds_that_do_not_pair_are_refused() -> None:
    """Rounds that do not pair one to one are refused, not compared."""
    with pytest.raises(ValueError, match="do not pair"):
        Comparison.of([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="do not pair"):
        Comparison.of([], [])


def test_rounds_alternate_the_order() -> None:
    """No strategy always runs first: the order is reversed every other round."""
    names = ["daemon", "daemon-enforce", "ceiling"]
    assert in_turn(names, 0) == names
    assert in_turn(names, 1) == ["ceiling", "daemon-enforce", "daemon"]
    assert in_turn(names, 2) == names
