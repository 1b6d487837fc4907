"""The Pareto front on hand-made points."""

from __future__ import annotations

from maskprune.report.pareto import pareto_front


def test_pareto_front_by_hand() -> None:
    pts = [
        {"name": "a", "x": 1.0, "y": 0.5},
        {"name": "b", "x": 2.0, "y": 0.8},
        {"name": "c", "x": 3.0, "y": 0.7},
        {"name": "d", "x": 2.0, "y": 0.6},
        {"name": "e", "x": 4.0, "y": 0.9},
    ]
    assert pareto_front(pts, "x", "y") == ["a", "b", "e"]  # c and d: b is cheaper-or-equal and better
    assert pareto_front(pts, "x", "y", lower_x_better=False) == ["e"]
