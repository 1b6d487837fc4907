"""Aggregation over seeds: means with Student-t confidence intervals, paired differences, verdicts.

An interval is mean +- t_{(1+c)/2, n-1} * s / sqrt(n) over the n seeds (s: the sample standard
deviation); with one seed it has no width and every verdict on it is inconclusive. A comparison of
two arms is paired by seed: the interval of the per-seed differences.

Verdicts, at the interval's confidence:
  - directional claim (the effect is an increase): reproduced if the interval of the difference
    lies above 0, not reproduced if it lies below 0, inconclusive if it contains 0;
  - non-inferiority claim (no loss beyond a margin): reproduced if the interval lies above
    -margin, not reproduced if it lies below -margin, inconclusive otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

REPRODUCED = "effect reproduced"
NOT_REPRODUCED = "not reproduced"


def inconclusive(confidence: float) -> str:
    """The verdict when the interval decides nothing: 'inconclusive at 95%'."""
    return f"inconclusive at {confidence:.0%}"


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its Student-t interval [low, high] at `confidence`."""

    mean: float
    low: float | None  # None with fewer than two values
    high: float | None
    n: int
    confidence: float

    @property
    def decided(self) -> bool:
        """Whether the interval has bounds (two values or more)."""
        return self.low is not None and self.high is not None

    def text(self, scale: float = 1.0, digits: int = 2, signed: bool = False) -> str:
        """'81.20 [80.10, 82.30] (n=3)', values multiplied by `scale` (e.g. 100 for points)."""
        sign = "+" if signed else ""
        mean = f"{self.mean * scale:{sign}.{digits}f}"
        if not self.decided:
            return f"{mean} (n={self.n})"
        return f"{mean} [{self.low * scale:{sign}.{digits}f}, {self.high * scale:{sign}.{digits}f}] (n={self.n})"


def _betainc_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betainc_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betainc_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    x = t * t / (df + t * t)
    if x < 0.5:  # near 0: P(|T| <= |t|) = I_x(1/2, df/2), exact where 1 - x would round to 1
        return 0.5 + 0.5 * math.copysign(betainc(0.5, df / 2.0, x), t)
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom (bisection on the CDF)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level {p} must lie in (0, 1)")
    low, high = -1.0, 1.0
    while student_t_cdf(low, df) > p:
        low *= 2.0
    while student_t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        low, high = (mid, high) if student_t_cdf(mid, df) < p else (low, mid)
    return 0.5 * (low + high)


def t_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t interval of `values` (NaN and None skipped)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        raise ValueError("no values to aggregate")
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return Interval(mean, None, None, len(xs), confidence)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    half = student_t_quantile((1 + confidence) / 2, len(xs) - 1) * sd / math.sqrt(len(xs))
    return Interval(mean, mean - half, mean + half, len(xs), confidence)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> Interval:
    """Interval of b - a over the seeds both arms have."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two arms share no seed")
    return t_interval([b[s] - a[s] for s in seeds], confidence)


def directional_verdict(diff: Interval) -> str:
    """The verdict on 'the effect is an increase' from the interval of the difference."""
    if not diff.decided:
        return inconclusive(diff.confidence)
    if diff.low > 0:
        return REPRODUCED
    if diff.high < 0:
        return NOT_REPRODUCED
    return inconclusive(diff.confidence)


def non_inferiority_verdict(diff: Interval, margin: float) -> str:
    """The verdict on 'no loss beyond `margin`' from the interval of the difference."""
    if not diff.decided:
        return inconclusive(diff.confidence)
    if diff.low > -margin:
        return REPRODUCED
    if diff.high < -margin:
        return NOT_REPRODUCED
    return inconclusive(diff.confidence)
