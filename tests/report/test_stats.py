"""Seed aggregation on hand-made tables: means, t intervals, paired differences and verdicts."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from maskprune.report.stats import (
    NOT_REPRODUCED,
    REPRODUCED,
    Interval,
    directional_verdict,
    non_inferiority_verdict,
    paired_difference,
    student_t_cdf,
    student_t_quantile,
    t_interval,
)

T_975_2 = 4.302652729911275  # Student t quantile, 2 degrees of freedom, 97.5% (tables)


def test_t_interval_by_hand() -> None:
    iv = t_interval([0.80, 0.82, 0.84])
    # mean 0.82; s = 0.02; half-width = t * s / sqrt(3)
    assert iv.mean == pytest.approx(0.82)
    assert iv.high - iv.mean == pytest.approx(T_975_2 * 0.02 / math.sqrt(3))
    assert iv.low == pytest.approx(2 * iv.mean - iv.high) and iv.n == 3
    assert iv.text(scale=100) == f"82.00 [{iv.low * 100:.2f}, {iv.high * 100:.2f}] (n=3)"


def test_one_seed_has_no_interval_and_decides_nothing() -> None:
    iv = t_interval([0.7, None, float("nan")])
    assert (iv.mean, iv.low, iv.high, iv.n) == (0.7, None, None, 1)
    assert directional_verdict(iv) == "inconclusive at 95%"
    assert iv.text(scale=100) == "70.00 (n=1)"
    with pytest.raises(ValueError, match="no values"):
        t_interval([])


def test_paired_difference_uses_the_shared_seeds_only() -> None:
    full = {0: 0.70, 1: 0.72, 2: 0.71, 3: 0.99}
    masked = {0: 0.73, 1: 0.74, 2: 0.75}
    diff = paired_difference(full, masked)
    assert diff.n == 3 and diff.mean == pytest.approx((0.03 + 0.02 + 0.04) / 3)
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_verdicts_on_hand_made_intervals() -> None:
    def iv(low: float, high: float) -> Interval:
        return Interval((low + high) / 2, low, high, 3, 0.95)

    assert directional_verdict(iv(0.01, 0.03)) == REPRODUCED
    assert directional_verdict(iv(-0.03, -0.01)) == NOT_REPRODUCED
    assert directional_verdict(iv(-0.01, 0.02)) == "inconclusive at 95%"  # the interval overlaps zero
    assert non_inferiority_verdict(iv(-0.005, 0.01), margin=0.01) == REPRODUCED
    assert non_inferiority_verdict(iv(-0.04, -0.02), margin=0.01) == NOT_REPRODUCED
    assert non_inferiority_verdict(iv(-0.02, 0.01), margin=0.01) == "inconclusive at 95%"


def test_a_real_effect_over_three_seeds_is_reproduced_and_noise_is_not() -> None:
    base = {0: 0.800, 1: 0.810, 2: 0.805}
    better = {0: 0.830, 1: 0.842, 2: 0.834}
    noisy = {0: 0.790, 1: 0.825, 2: 0.803}
    assert directional_verdict(paired_difference(base, better)) == REPRODUCED
    assert directional_verdict(paired_difference(base, noisy)).startswith("inconclusive")


@pytest.mark.parametrize("p", [0.5, 0.6, 0.9, 0.975, 0.995, 0.025, 0.2])
def test_student_t_quantile_matches_the_closed_forms(p: float) -> None:
    # df = 1 is the Cauchy distribution; df = 2 has F^-1(p) = (2p - 1) / sqrt(2p(1 - p))
    assert student_t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-8, abs=1e-12)
    assert student_t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-8, abs=1e-12)


def test_student_t_quantile_table_values_and_normal_limit() -> None:
    # printed t tables (two-sided 95% and 99%)
    assert student_t_quantile(0.975, 4) == pytest.approx(2.776, abs=5e-4)
    assert student_t_quantile(0.975, 9) == pytest.approx(2.262, abs=5e-4)
    assert student_t_quantile(0.995, 10) == pytest.approx(3.169, abs=5e-4)
    assert student_t_quantile(0.025, 4) == pytest.approx(-student_t_quantile(0.975, 4))
    assert student_t_quantile(0.975, 1e6) == pytest.approx(NormalDist().inv_cdf(0.975), rel=1e-5)
    for t in (-3.0, -0.5, 0.0, 1.2, 4.0):
        assert student_t_cdf(t, 7) + student_t_cdf(-t, 7) == pytest.approx(1.0)
