"""RAUC and epochs-to-target on analytic curves."""

from __future__ import annotations

import pytest

from maskprune.report.rauc import epochs_to_reach, rauc

EPOCHS = [1.0, 2.0, 3.0, 4.0, 5.0]
S1 = [0.5 + 0.1 * e for e in EPOCHS]  # baseline: a + b E with b = 0.1


def test_constant_offset_gives_the_value_derived_by_hand() -> None:
    # integral (S1 + c - S1) = c (E2 - E1); integral (S1(E) - S1(E1)) = b (E2 - E1)^2 / 2
    c = 0.05
    s2 = [s + c for s in S1]
    assert rauc(EPOCHS, S1, s2, 1, 5) == pytest.approx(2 * c / (0.1 * 4))
    assert rauc(EPOCHS, S1, s2, 2, 4) == pytest.approx(2 * c / (0.1 * 2))


def test_equal_curves_give_zero_and_a_worse_curve_is_negative() -> None:
    assert rauc(EPOCHS, S1, S1, 1, 5) == 0.0
    assert rauc(EPOCHS, S1, [s - 0.02 for s in S1], 1, 5) < 0


def test_a_faster_curve_reaching_the_same_end() -> None:
    # S2 reaches the plateau of a saturating baseline two epochs earlier: hand-computed trapezoids
    s1 = [0.5, 0.6, 0.7, 0.8, 0.8]
    s2 = [0.5, 0.7, 0.8, 0.8, 0.8]
    gain = 0.05 + 0.15 + 0.25 + 0.3  # trapezoids of (0, .1, .2, .3, .3)
    diff = 0.05 + 0.1 + 0.05 + 0.0  # trapezoids of (0, .1, .1, 0, 0)
    assert rauc(EPOCHS, s1, s2, 1, 5) == pytest.approx(diff / gain)


def test_undefined_or_malformed_ranges_raise() -> None:
    with pytest.raises(ValueError, match="does not improve"):
        rauc(EPOCHS, [0.7] * 5, S1, 1, 5)
    with pytest.raises(ValueError, match="two sampled epochs"):
        rauc(EPOCHS, S1, S1, 3, 3)
    with pytest.raises(ValueError, match="two sampled epochs"):
        rauc(EPOCHS, S1, S1, 1, 9)
    with pytest.raises(ValueError, match="different lengths"):
        rauc(EPOCHS, S1, S1[:3], 1, 5)


def test_epochs_to_reach_interpolates_between_samples() -> None:
    s2 = [0.55 + 0.1 * e for e in EPOCHS]  # S1 + 0.05 reaches S1's final 1.0 at E = 4.5
    assert epochs_to_reach(EPOCHS, s2, S1[-1]) == pytest.approx(4.5)
    assert epochs_to_reach(EPOCHS, S1, 0.5) == 1.0
    assert epochs_to_reach(EPOCHS, S1, 2.0) is None
