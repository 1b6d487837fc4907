"""Convergence comparisons of two training curves (MTO's RAUC and epochs-to-target).

    RAUC(S1, S2; E1, E2) = integral_{E1}^{E2} (S2 - S1) dE / integral_{E1}^{E2} (S1(E) - S1(E1)) dE

S1 is the baseline's downstream accuracy per epoch, S2 the compared run's. RAUC is the area
gained over the baseline, relative to the area the baseline itself gains after E1: 0 for equal
curves, positive when S2 lies above S1. Curves are sampled at the same epochs and integrated with
the trapezoid rule (exact for curves that are linear between samples).
"""

from __future__ import annotations

from collections.abc import Sequence


def _trapezoid(xs: Sequence[float], ys: Sequence[float]) -> float:
    return sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))


def rauc(epochs: Sequence[float], s1: Sequence[float], s2: Sequence[float], e1: float, e2: float) -> float:
    """RAUC of curve `s2` against baseline `s1`, both sampled at `epochs`, over [e1, e2].

    Raises ValueError when the range is not two sampled epochs e1 < e2, or when the baseline gains
    nothing over it (the ratio is undefined).
    """
    if not len(epochs) == len(s1) == len(s2):
        raise ValueError(f"curves of different lengths: {len(epochs)} epochs, {len(s1)} and {len(s2)} values")
    if list(epochs) != sorted(set(epochs)):
        raise ValueError("epochs must be strictly increasing")
    if e1 not in epochs or e2 not in epochs or not e1 < e2:
        raise ValueError(
            f"epoch range [{e1}, {e2}] must be two sampled epochs with e1 < e2 (sampled: {epochs[0]} to {epochs[-1]})"
        )
    lo, hi = list(epochs).index(e1), list(epochs).index(e2) + 1
    xs = epochs[lo:hi]
    gain = _trapezoid(xs, [s1[i] - s1[lo] for i in range(lo, hi)])
    if gain <= 0:
        raise ValueError(f"the baseline does not improve over epochs {e1}-{e2}, so RAUC is undefined")
    return _trapezoid(xs, [s2[i] - s1[i] for i in range(lo, hi)]) / gain


def epochs_to_reach(epochs: Sequence[float], curve: Sequence[float], target: float) -> float | None:
    """The first epoch at which `curve` reaches `target` (linear between samples), or None if never."""
    for i, value in enumerate(curve):
        if value >= target:
            if i == 0:
                return float(epochs[0])
            x0, x1, y0 = epochs[i - 1], epochs[i], curve[i - 1]
            return float(x0 + (x1 - x0) * (target - y0) / (value - y0))
    return None
