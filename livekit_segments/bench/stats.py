"""Small statistics helpers (no numpy: the bench runs with livekit-agents' dependencies)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["growth_exponent", "linear_fit", "median", "percentile", "ratio"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated linearly between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean (of a non-empty sequence)."""
    return sum(values) / len(values)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, or None when either side is missing or the denominator is not positive."""
    if num is None or den is None or not den > 0 or not math.isfinite(num):
        return None
    return num / den


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``y = slope * x + intercept``."""
    n = len(xs)
    if n < 2:
        return math.nan, math.nan
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return math.nan, math.nan
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


def growth_exponent(x0: float, y0: float, x1: float, y1: float) -> float:
    """``k`` in ``y ~ x**k`` between two points: 1 is linear, below 1 has fixed overhead."""
    if min(x0, y0, x1, y1) <= 0 or x0 == x1:
        return math.nan
    return math.log(y1 / y0) / math.log(x1 / x0)
