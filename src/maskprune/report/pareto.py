"""Pareto fronts of models by cost and accuracy, and the family a model's name belongs to."""

from __future__ import annotations

from typing import Any


def pareto_front(points: list[dict[str, Any]], x: str, y: str, lower_x_better: bool = True) -> list[str]:
    """Names of the points no other point beats on both axes (x: lower or higher better; y: higher better)."""

    def beats(q: dict[str, Any], p: dict[str, Any]) -> bool:
        better_x = q[x] <= p[x] if lower_x_better else q[x] >= p[x]
        strictly = q[x] != p[x] or q[y] != p[y]
        return better_x and q[y] >= p[y] and strictly

    return [p["name"] for p in points if not any(beats(q, p) for q in points if q is not p)]


def family(name: str) -> str:
    """A model's family in the plots: 'prune/evit-full-0.5' -> 'evit', 'distill/x/probe' -> 'distill probe'."""
    if name.startswith("prune/"):
        return name.split("/")[1].split("-")[0]
    if name.startswith("distill/"):
        return "distill " + name.split("/")[-1]
    return name.split("/")[0]
