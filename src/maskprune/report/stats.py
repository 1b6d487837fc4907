"""Aggregation over seeds and the verdicts on the papers' claims.

An interval is mean +- t_{(1+c)/2, n-1} * s / sqrt(n) over the n seeds (s: the sample standard
deviation); with one seed, or values all equal (a tie, below), it has no bounds. A comparison of two
arms is paired by seed: the mean and interval of the per-seed differences (arm minus reference).

Verdicts. Each claim is decided by one or more pre-registered tests, each a paired comparison whose
paper side is mean difference > delta (delta = 0 for a directional claim, -margin for a
non-inferiority claim):
  - each test is a two-sided one-sample Student-t test of H0: mean difference == delta;
  - its p-value is Holm-Bonferroni adjusted over the fixed family of headline tests (the family is
    fixed before the run, so a test that cannot run still counts in its size);
  - at level alpha = 1 - confidence, a test is reproduced if its adjusted p < alpha and the mean
    lies above delta, contradicted if adjusted p < alpha and the mean lies at or below delta,
    inconclusive otherwise;
  - a claim with several tests is reproduced only if all its tests are, contradicted if any is,
    inconclusive otherwise;
  - with one seed there is no test (no p-value) and the verdict is inconclusive; nor when the
    per-seed differences are all equal: top-1 moves in steps of one test image, so equal values are
    a tie of the measurement, which leaves the spread unknown, not zero (the t statistic would be
    infinite and any such test "decided");
  - a claim whose preconditions fail (maskprune.report.checks) is not testable here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

TIE = 1e-9  # values closer than this are equal: float rounding, far below one test image in any test set
REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
NOT_TESTABLE = "not testable here"


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its Student-t interval [low, high] at `confidence`."""

    mean: float
    low: float | None  # None with fewer than two distinct values
    high: float | None
    n: int
    confidence: float

    @property
    def decided(self) -> bool:
        """Whether the interval has bounds (two distinct values or more)."""
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
    if len(xs) < 2 or max(xs) - min(xs) <= TIE:  # NOTE: no spread to build it from (a tie: see above)
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


def t_test_p(values: Sequence[float], delta: float) -> float | None:
    """Two-sided p-value of the one-sample Student-t test of H0: mean == `delta` (NaN and None skipped).

    None with fewer than two values, and when they are all equal (no spread to test with; see above).
    """
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if len(xs) < 2:
        return None
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    if max(xs) - min(xs) <= TIE:
        return None
    t = (mean - delta) / (sd / math.sqrt(len(xs)))
    return min(1.0, 2.0 * student_t_cdf(-abs(t), len(xs) - 1))


MOST_SEEDS = 1000  # a power line looks no further


def seeds_to_decide(values: Sequence[float], delta: float, alpha: float) -> int | None:
    """The fewest seeds at which the two-sided t-test of `values` against `delta` at level `alpha` would
    reject, if their mean and standard deviation stayed as observed (a power line for an inconclusive test).

    None when no number up to MOST_SEEDS would (the mean sits at or near `delta`) or the spread is
    unknown (fewer than two values, or all equal).
    """
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if len(xs) < 2:
        return None
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    effect = abs(mean - delta)
    if effect == 0.0 or max(xs) - min(xs) <= TIE:
        return None
    for n in range(2, MOST_SEEDS + 1):
        if effect / (sd / math.sqrt(n)) >= student_t_quantile(1 - alpha / 2, n - 1):
            return n
    return None


def holm(pvalues: Mapping[str, float | None], family_size: int | None = None) -> dict[str, float | None]:
    """Holm-Bonferroni step-down adjusted p-values, keyed like `pvalues`.

    With m = `family_size` (default: len(pvalues)) and the p-values sorted p_(1) <= ... <= p_(k),
    adjusted_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)). None entries (tests that could not run)
    stay None but still count in m.
    """
    m = len(pvalues) if family_size is None else family_size
    if m < len(pvalues):
        raise ValueError(f"family size {m} is smaller than the {len(pvalues)} tests given")
    adjusted: dict[str, float | None] = dict.fromkeys(pvalues)
    running = 0.0
    ranked = sorted((p, name) for name, p in pvalues.items() if p is not None)
    for j, (p, name) in enumerate(ranked, start=1):
        running = max(running, min(1.0, (m - j + 1) * p))
        adjusted[name] = running
    return adjusted


@dataclass(frozen=True)
class Test:
    """One pre-registered comparison: per-seed differences (arm minus reference, as fractions) whose
    paper side is mean > `delta` (0 for a directional claim, -margin for non-inferiority)."""

    __test__ = False  # not a pytest test class

    name: str
    diffs: dict[int, float]
    delta: float

    def interval(self, confidence: float) -> Interval:
        """The mean difference and its Student-t interval at `confidence`."""
        return t_interval(self.diffs.values(), confidence)

    def p(self) -> float | None:
        """The unadjusted two-sided p-value against `delta` (None with fewer than two seeds)."""
        return t_test_p(list(self.diffs.values()), self.delta)


def decide(mean: float, delta: float, p_adjusted: float | None, alpha: float) -> str:
    """The verdict on one test: INCONCLUSIVE unless its adjusted p-value is below `alpha`, then
    REPRODUCED if the mean lies above `delta`, CONTRADICTED otherwise."""
    if p_adjusted is None or p_adjusted >= alpha:
        return INCONCLUSIVE
    return REPRODUCED if mean > delta else CONTRADICTED
