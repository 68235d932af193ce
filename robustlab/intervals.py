"""95% intervals on accuracies, and on the difference of two rows measured on the same samples.

An accuracy on a few hundred samples moves by several points between seeds; a row without its interval
invites reading noise as a gain. Every interval here is Wilson's score interval (Wilson 1927): unlike
``p ± 1.96 sqrt(p(1-p)/n)`` it stays inside [0, 1] and does not shrink to a point at 0% or 100%, where
robust accuracies often sit. Two rows of one run (a defense and its control, two attacks) were measured
on the same samples, so their difference gets Newcombe's paired interval (Stat. Med. 1998, his method 10:
the two Wilson intervals combined through the samples' correlation), narrower than treating them as
independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Z95",
    "PairedDifference",
    "half_width",
    "paired_difference",
    "wilson_interval",
    "wilson_sigma",
    "with_interval",
]

Z95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``p`` measured on ``n`` samples (``(0, 1)`` when ``n`` is 0).

    Example:
        >>> [round(v, 4) for v in wilson_interval(0.0, 100)]
        [0.0, 0.037]
    """
    if n <= 0:
        return 0.0, 1.0
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def half_width(p: float, n: int) -> float:
    """Half the width of the 95% Wilson interval: the ``±`` printed beside an accuracy."""
    low, high = wilson_interval(p, n)
    return (high - low) / 2


def wilson_sigma(p: float, n: int) -> float:
    """One standard error of ``p`` in Wilson's arithmetic (the 95% half-width over 1.96), for margins in sigmas."""
    return half_width(p, n) / Z95


def with_interval(p: float | None, n: int) -> str | None:
    """``51.6% ±6.1``: an accuracy with the half-width of its 95% interval in points (``None`` stays ``None``).

    Example:
        >>> with_interval(0.516, 256)
        '51.6% ±6.1'
    """
    if p is None or math.isnan(p):
        return None
    return f"{p:.1%} ±{100 * half_width(p, n):.1f}"


@dataclass(frozen=True)
class PairedDifference:
    """``first - second`` of two accuracies on the same ``n`` samples, with its 95% interval."""

    difference: float
    low: float
    high: float
    n: int

    def within_noise(self) -> bool:
        """Whether the interval holds 0: the data cannot tell the two rows apart."""
        return self.low <= 0 <= self.high

    def describe(self) -> str:
        """One line for a RESULTS file."""
        verdict = "inside the noise" if self.within_noise() else "outside the noise"
        return (
            f"{100 * self.difference:+.1f} points, 95% interval [{100 * self.low:+.1f}, {100 * self.high:+.1f}] "
            f"on {self.n} paired samples: {verdict}"
        )


def paired_difference(first: Sequence[bool], second: Sequence[bool]) -> PairedDifference:
    """The difference of two accuracies measured on the same samples (``first[i]`` and ``second[i]``: sample ``i``).

    Example:
        >>> d = paired_difference([True] * 60 + [False] * 40, [True] * 50 + [False] * 50)
        >>> round(d.difference, 2), d.within_noise()
        (0.1, False)
    """
    if len(first) != len(second):
        raise ValueError(f"paired rows need the same samples, got {len(first)} and {len(second)}")
    n = len(first)
    both = sum(1 for a, b in zip(first, second, strict=True) if a and b)
    only_first = sum(1 for a, b in zip(first, second, strict=True) if a and not b)
    only_second = sum(1 for a, b in zip(first, second, strict=True) if b and not a)
    neither = n - both - only_first - only_second
    if n == 0:
        return PairedDifference(0.0, -1.0, 1.0, 0)
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    (l1, u1), (l2, u2) = wilson_interval(p1, n), wilson_interval(p2, n)
    spread = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    phi = (both * neither - only_first * only_second) / math.sqrt(spread) if spread else 0.0
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    difference = p1 - p2
    return PairedDifference(difference, max(-1.0, difference - below), min(1.0, difference + above), n)
