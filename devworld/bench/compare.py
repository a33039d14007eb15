"""AUTH_MODE=enforce against off, figure by figure, for `make bench` and the in-process measure.

Rounds of the two modes run back to back in turn, so besides the medians of each mode the
median of each round's own difference is printed: on this shared VM the load drifts between
rounds more than a few µs an event, and a round's two runs share most of that drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import Final, TypeVar

_T = TypeVar("_T")

# Issue 19's budget for enforce: CPU per event more than off, and no events/s lost.
BUDGET_US_PER_EVENT: Final = 5.0


def in_turn(names: Sequence[_T], round_: int) -> list[_T]:
    """The order of round `round_` (from 0): as given, reversed every other round, so that no
    strategy or mode always runs first in a round (after the bench's own set-up) or last."""
    return list(names) if round_ % 2 == 0 else list(reversed(names))


@dataclass(frozen=True)
class Comparison:
    """One figure's values by round, off and enforce; round i of each ran back to back."""

    off: tuple[float, ...]
    enforce: tuple[float, ...]

    @classmethod
    def of(cls, off: Sequence[float], enforce: Sequence[float]) -> Comparison:
        if not off or len(off) != len(enforce):
            raise ValueError(f"rounds do not pair: {len(off)} off, {len(enforce)} enforce")
        return cls(tuple(off), tuple(enforce))

    @property
    def change(self) -> float:
        """Enforce's median less off's."""
        return median(self.enforce) - median(self.off)

    @property
    def round_change(self) -> float:
        """The median of each round's enforce less off."""
        return median(e - o for o, e in zip(self.off, self.enforce, strict=True))

    @property
    def relative_change(self) -> float:
        """Enforce's median over off's, less 1."""
        return median(self.enforce) / median(self.off) - 1

    @property
    def round_relative_change(self) -> float:
        """The median of each round's enforce over off, less 1."""
        return median(e / o - 1 for o, e in zip(self.off, self.enforce, strict=True))

    def line(self, label: str, *, digits: int = 1, relative: bool = False) -> str:
        """`label  off → enforce  change (by round ...)`, as a change in % if `relative`; one
        round has no "by round"."""
        values = f"{median(self.off):,.{digits}f} → {median(self.enforce):,.{digits}f}"
        if relative:
            change, by_round = f"{self.relative_change:+.1%}", f"{self.round_relative_change:+.1%}"
        else:
            change, by_round = f"{self.change:+.{digits}f}", f"{self.round_change:+.{digits}f}"
        if len(self.off) > 1:
            change += f" (by round {by_round})"
        return f"  {label:<24}{values:>22}  {change}"


def header(rounds: int) -> str:
    """The title of a comparison's lines."""
    medians = "medians of 1 round" if rounds == 1 else f"medians of {rounds} rounds"
    return (
        f"enforce against off ({medians}; by round: the median of each round's own difference;"
        f" issue 19's budget: +{BUDGET_US_PER_EVENT:g} µs/event, no loss of events/s):"
    )
