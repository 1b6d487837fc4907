"""Seed aggregation on hand-made tables: means, t intervals, paired differences, t tests, Holm and verdicts."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from maskprune.report.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    REPRODUCED,
    Test,
    decide,
    holm,
    paired_difference,
    student_t_cdf,
    student_t_quantile,
    t_interval,
    t_test_p,
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
    assert decide(iv.mean, 0.0, holm({"one seed": t_test_p([0.7], 0.0)})["one seed"], alpha=0.05) == INCONCLUSIVE
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


def test_t_test_p_by_hand() -> None:
    # [1, 3] vs 0: mean 2, s = sqrt(2), t = 2 / (sqrt(2) / sqrt(2)) = 2 on 1 df (Cauchy): p = 1 - 2 atan(2) / pi
    assert t_test_p([1.0, 3.0], 0.0) == pytest.approx(1 - 2 * math.atan(2) / math.pi, rel=1e-10)
    assert t_test_p([1.0, 3.0], 0.0) == pytest.approx(0.2952, abs=1e-4)
    # [0.01, 0.02, 0.03] vs 0: mean 0.02, s = 0.01, t = 2 sqrt(3) on 2 df, whose CDF is 1/2 + t / (2 sqrt(2 + t^2))
    t = 2 * math.sqrt(3)
    assert t_test_p([0.01, 0.02, 0.03], 0.0) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    # the same sample against delta = 0.04 is the mirror image: t = -2 sqrt(3), the same two-sided p
    assert t_test_p([0.01, 0.02, 0.03], 0.04) == pytest.approx(t_test_p([0.01, 0.02, 0.03], 0.0), rel=1e-9)
    assert t_test_p([0.01, 0.02, 0.03], 0.02) == pytest.approx(1.0)


def test_t_test_p_edge_cases() -> None:
    assert t_test_p([0.02], 0.0) is None  # one seed: no test
    assert t_test_p([], 0.0) is None
    assert t_test_p([1.0, 3.0, float("nan")], 0.0) == t_test_p([1.0, 3.0], 0.0)  # NaN skipped, as in t_interval
    # equal differences (e.g. -0.16 points on two seeds): a tie of the measurement, not a certain effect
    assert t_test_p([-0.0016, -0.0016], -0.005) is None
    assert t_test_p([0.02, 0.02], 0.02) is None


@pytest.mark.parametrize(
    ("values", "delta"),
    [([0.012, -0.004, 0.021], 0.0), ([0.01, 0.02, 0.015, 0.03, -0.005], -0.01), ([5.0, 7.0, 6.5, 9.0], 10.0)],
)
def test_t_test_p_matches_scipy(values: list[float], delta: float) -> None:
    stats = pytest.importorskip("scipy.stats")
    assert t_test_p(values, delta) == pytest.approx(stats.ttest_1samp(values, delta).pvalue, rel=1e-9)


def test_holm_textbook_example() -> None:
    # sorted: d 0.005 x 4 = 0.02, a 0.01 x 3 = 0.03, c 0.03 x 2 = 0.06, b 0.04 x 1 = 0.04 -> max(0.06, 0.04) = 0.06
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02})
    assert list(adjusted) == ["a", "b", "c", "d"]


def test_holm_counts_untestable_claims_in_the_family_and_caps_at_one() -> None:
    # m = 3 although only two tests ran: a 0.01 x 3 = 0.03, c 0.02 x 2 = 0.04 (not 0.02 and 0.02 with m = 2)
    assert holm({"a": 0.01, "b": None, "c": 0.02}) == pytest.approx({"a": 0.03, "b": None, "c": 0.04})
    assert holm({"a": 0.01}, family_size=3) == pytest.approx({"a": 0.03})
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}
    assert holm({}) == {}
    with pytest.raises(ValueError, match="smaller than"):
        holm({"a": 0.01, "b": 0.02}, family_size=1)


def test_a_p_of_0049_among_three_tests_no_longer_decides() -> None:
    # the example: the smallest of three p-values, 0.049, is multiplied by 3
    adjusted = holm({"x": 0.049, "y": 0.2, "z": 0.5})
    assert adjusted == pytest.approx({"x": 0.147, "y": 0.4, "z": 0.5})
    assert decide(0.01, 0.0, 0.049, alpha=0.05) == REPRODUCED  # unadjusted
    assert decide(0.01, 0.0, adjusted["x"], alpha=0.05) == INCONCLUSIVE


def test_decide_all_branches() -> None:
    assert decide(0.02, 0.0, None, alpha=0.05) == INCONCLUSIVE  # one seed: no test
    assert decide(0.02, 0.0, 0.05, alpha=0.05) == INCONCLUSIVE  # p exactly at alpha does not decide
    assert decide(0.02, 0.0, 0.01, alpha=0.05) == REPRODUCED
    assert decide(-0.02, 0.0, 0.01, alpha=0.05) == CONTRADICTED
    assert decide(-0.005, -0.01, 0.01, alpha=0.05) == REPRODUCED  # non-inferiority: above -margin
    assert decide(-0.02, -0.01, 0.01, alpha=0.05) == CONTRADICTED


def test_a_test_holds_its_diffs_interval_and_p() -> None:
    test = Test("masked KD vs full KD", {0: 0.01, 1: 0.02, 2: 0.03}, delta=0.0)
    iv = test.interval(0.95)
    assert iv == t_interval([0.01, 0.02, 0.03], 0.95)
    assert test.p() == t_test_p([0.01, 0.02, 0.03], 0.0)
    assert Test("one seed", {0: 0.05}, delta=0.0).p() is None


def test_a_real_effect_over_three_seeds_is_reproduced_and_noise_is_not() -> None:
    base = {0: 0.800, 1: 0.810, 2: 0.805}
    better = {0: 0.830, 1: 0.842, 2: 0.834}
    noisy = {0: 0.790, 1: 0.825, 2: 0.803}
    tests = [
        Test(name, {s: arm[s] - base[s] for s in base}, 0.0) for name, arm in (("better", better), ("noisy", noisy))
    ]
    adjusted = holm({t.name: t.p() for t in tests})
    words = {t.name: decide(t.interval(0.95).mean, t.delta, adjusted[t.name], alpha=0.05) for t in tests}
    assert words == {"better": REPRODUCED, "noisy": INCONCLUSIVE}


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
