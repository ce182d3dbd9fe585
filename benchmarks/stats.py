"""Small statistics helpers (no numpy: the bench runs with livekit-agents' dependencies)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = [
    "MIN_SAMPLES",
    "Estimate",
    "Verdict",
    "bootstrap_interval",
    "counterbalanced_estimate",
    "growth_exponent",
    "linear_fit",
    "median",
    "median_difference_estimate",
    "median_estimate",
    "min_samples",
    "no_difference_verdict",
    "percentile",
    "quantile_estimate",
    "ratio",
    "ratio_of_medians_estimate",
    "verdict",
]

T = TypeVar("T")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated linearly between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    if pos == lo or ordered[hi] == ordered[lo]:
        return ordered[lo]  # (also keeps an infinite value from turning into NaN)
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


# -- interval estimates and verdicts ---------------------------------------------------------

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def min_samples(q: float, confidence: float = CONFIDENCE) -> int:
    """The smallest n for which any ``confidence`` interval of the ``q``-th percentile exists
    without assuming a distribution: [min, max] of n samples covers it with probability
    ``1 - p**n - (1 - p)**n`` (p = q / 100). 6 for the median, 299 for p99."""
    p = q / 100.0
    n = 1
    while 1.0 - p**n - (1.0 - p) ** n < confidence:
        n += 1
    return n


# fewer samples than this make any verdict on a median inconclusive
MIN_SAMPLES = min_samples(50.0)

Verdict = Literal["met", "missed", "inconclusive", "n/a"]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval, from ``n`` independent samples."""

    point: float
    low: float
    high: float
    n: int
    statistic: str  # what ``point`` is, e.g. "median of per-pair ratios"
    min_n: int = MIN_SAMPLES  # fewer samples cannot support the interval: no verdict

    @property
    def too_few(self) -> bool:
        return self.n < self.min_n

    def to_json(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "ci95": [self.low, self.high],
            "n": self.n,
            "min_n": self.min_n,
            "statistic": self.statistic,
            "interval": (
                f"percentile bootstrap {CONFIDENCE:.0%}, {BOOTSTRAP_RESAMPLES} resamples, "
                f"seed {BOOTSTRAP_SEED}"
            ),
        }


def _interval(
    draw: Callable[[], float], resamples: int, confidence: float, *, keep_infinite: bool = False
) -> tuple[float, float]:
    """Percentile interval of ``resamples`` draws; non-finite draws (degenerate fits) dropped,
    except infinities where ``keep_infinite`` says they are values (an unbounded ratio)."""
    draws = (draw() for _ in range(resamples))
    values = [v for v in draws if math.isfinite(v) or (keep_infinite and not math.isnan(v))]
    tail = (1.0 - confidence) / 2 * 100.0
    return percentile(values, tail), percentile(values, 100.0 - tail)


def _resample(rng: random.Random, samples: Sequence[T]) -> list[T]:
    return rng.choices(samples, k=len(samples))


def bootstrap_interval(
    samples: Sequence[T],
    statistic: Callable[[Sequence[T]], float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """The percentile-bootstrap interval of ``statistic(samples)``.

    Seeded, with its own generator: the same samples always give the same interval, and the
    global `random` state is left alone.
    """
    if not samples:
        return math.nan, math.nan
    rng = random.Random(seed)
    return _interval(lambda: statistic(_resample(rng, samples)), resamples, confidence)


def median_estimate(samples: Sequence[float], statistic: str) -> Estimate:
    """The median of ``samples`` with its bootstrap interval."""
    if not samples:
        return Estimate(math.nan, math.nan, math.nan, 0, statistic)
    low, high = bootstrap_interval(samples, median)
    return Estimate(median(samples), low, high, len(samples), statistic)


def counterbalanced_ratios(ratios: Sequence[float]) -> list[float]:
    """Rounds ``2k`` and ``2k + 1`` ran the two forms in opposite orders: the geometric
    mean of their ratios cancels whatever running first or second does to one form (a
    multiplicative order effect), which otherwise splits the ratios into two modes whose
    median is unstable. A last unmatched round is left out."""
    return [math.sqrt(a * b) for a, b in zip(ratios[0::2], ratios[1::2], strict=False)]


def counterbalanced_estimate(ratios: Sequence[float | None]) -> Estimate:
    """The median of `counterbalanced_ratios` with its bootstrap interval.

    ``ratios[r]`` is round ``r``'s ratio, None where the round has none: the pair of rounds
    it belongs to is left out whole, so every value still pairs rounds in opposite orders.
    """
    both = [
        (a, b)
        for a, b in zip(ratios[0::2], ratios[1::2], strict=False)
        if a is not None and b is not None
    ]
    balanced = counterbalanced_ratios([x for ab in both for x in ab])
    return median_estimate(
        balanced,
        f"median of {len(balanced)} counterbalanced pair ratios (geometric mean of two rounds "
        f"in opposite orders)",
    )


def ratio_of_medians_estimate(
    nums: Sequence[float], dens: Sequence[float], statistic: str
) -> Estimate | None:
    """``median(nums) / median(dens)`` of paired samples, with a bootstrap interval that
    resamples the pairs together (so what one repetition's slow moment did to both stays
    together).

    For a ratio of two noisy differences: a per-pair ratio blows up wherever one pair's
    denominator comes out near 0, a median of many denominators does not. None when the
    median denominator is not positive (nothing to divide by). A resample whose median
    denominator is not positive counts as an infinite ratio, so an interval that depends on
    such resamples has no finite upper end and supports no verdict.
    """
    if len(nums) != len(dens):
        raise ValueError(f"{len(nums)} numerators for {len(dens)} denominators")
    point = ratio(median(nums), median(dens)) if nums else None
    if point is None:
        return None
    pairs = list(zip(nums, dens, strict=True))
    rng = random.Random(BOOTSTRAP_SEED)

    def draw() -> float:
        sample = _resample(rng, pairs)
        r = ratio(median([n for n, _ in sample]), median([d for _, d in sample]))
        return math.inf if r is None else r

    low, high = _interval(draw, BOOTSTRAP_RESAMPLES, CONFIDENCE, keep_infinite=True)
    return Estimate(point, low, high, len(pairs), statistic)


def quantile_estimate(samples: Sequence[float], q: float, statistic: str) -> Estimate:
    """The ``q``-th percentile of ``samples`` with its bootstrap interval."""
    min_n = min_samples(q)
    if not samples:
        return Estimate(math.nan, math.nan, math.nan, 0, statistic, min_n)
    low, high = bootstrap_interval(samples, lambda xs: percentile(xs, q))
    return Estimate(percentile(samples, q), low, high, len(samples), statistic, min_n)


def median_difference_estimate(
    subject: Sequence[float], base: Sequence[float], statistic: str
) -> Estimate:
    """``median(subject) - median(base)`` of two unpaired samples, each resampled by itself."""
    n = min(len(subject), len(base))
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, statistic)
    rng = random.Random(BOOTSTRAP_SEED)
    low, high = _interval(
        lambda: median(_resample(rng, subject)) - median(_resample(rng, base)),
        BOOTSTRAP_RESAMPLES,
        CONFIDENCE,
    )
    return Estimate(median(subject) - median(base), low, high, n, statistic)


def verdict(estimate: Estimate | None, limit: float, *, strict: bool = False) -> Verdict:
    """Judge an upper-bound target (``<= limit``, or ``< limit`` when ``strict``).

    ``met`` when the whole interval is within the target, ``missed`` when the whole interval
    is beyond it, ``inconclusive`` when it straddles the limit or rests on too few samples
    for the interval (``estimate.min_n``); ``n/a`` without an estimate (nothing to compare).
    """
    if estimate is None:
        return "n/a"
    lo, hi = estimate.low, estimate.high
    if estimate.too_few or not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    within = hi < limit if strict else hi <= limit
    beyond = lo >= limit if strict else lo > limit
    return "met" if within else "missed" if beyond else "inconclusive"


def no_difference_verdict(estimate: Estimate | None, tolerance: float) -> Verdict:
    """Judge "no measurable difference" on a ratio: its interval includes 1.0, or its upper
    end is at most ``tolerance`` (a ratio above 1 by less than that is no difference either).

    ``met`` then; ``missed`` when the whole interval is above ``tolerance``; ``inconclusive``
    when it lies above 1.0 but straddles ``tolerance``, or rests on too few samples;
    ``n/a`` without an estimate (nothing to compare).
    """
    if estimate is None:
        return "n/a"
    lo, hi = estimate.low, estimate.high
    if estimate.too_few or not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if lo <= 1.0 <= hi or hi <= tolerance:
        return "met"
    return "missed" if lo > tolerance else "inconclusive"
