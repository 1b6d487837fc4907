"""The report's figures (matplotlib, no display): each function draws one figure and saves it as PNG.

Series are given as means with optional interval bounds (None where one seed leaves no interval).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 110


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _band(ax: plt.Axes, xs: Sequence[float], low: Sequence[float | None], high: Sequence[float | None]) -> None:
    if all(v is not None for v in [*low, *high]):
        ax.fill_between(xs, low, high, alpha=0.2)


def curves(
    path: Path,
    series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float | None], Sequence[float | None]]],
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """Lines of means over x, each with its interval band: {label: (x, mean, low, high)}.

    The values are fractions (top-1) and are drawn in points, as the report's tables print them.
    """

    def points(values: Sequence[float | None]) -> list[float | None]:
        return [None if v is None else v * 100 for v in values]

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for label, (xs, mean, low, high) in series.items():
        ax.plot(xs, points(mean), marker="o", markersize=3, label=label)
        _band(ax, xs, points(low), points(high))
    ax.set(xlabel=xlabel, ylabel=f"{ylabel} (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def grouped_bars(
    path: Path, groups: Sequence[str], series: dict[str, Sequence[float]], ylabel: str, title: str
) -> Path:
    """Bars per group, one colour per series: {label: one value per group}."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=label)
    ax.set_xticks(x, groups)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto_scatter(
    path: Path,
    points: Sequence[dict],
    x: str,
    y: str,
    front: Sequence[str],
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """Models as points coloured by family ({'name', 'family', x, y}); the Pareto front joined and ringed."""
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    families = sorted({p["family"] for p in points})
    colours = plt.get_cmap("tab10")
    for i, family in enumerate(families):
        chosen = [p for p in points if p["family"] == family]
        ax.scatter([p[x] for p in chosen], [p[y] for p in chosen], s=28, color=colours(i % 10), label=family)
    on_front = sorted((p for p in points if p["name"] in front), key=lambda p: p[x])
    ax.plot([p[x] for p in on_front], [p[y] for p in on_front], color="black", linewidth=1, label="Pareto front")
    ax.scatter([p[x] for p in on_front], [p[y] for p in on_front], s=90, facecolors="none", edgecolors="black")
    for p in on_front:
        ax.annotate(p["name"], (p[x], p[y]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def pixel_mask(kept: np.ndarray, grid: int, height: int, width: int) -> np.ndarray:
    """A patch mask `[grid * grid]` as a pixel mask `[height, width]` of the image it was taken from.

    The model sees the image resized to a square, so pixel (y, x) lies in patch row
    `y * grid // height` and column `x * grid // width`, whatever the sides.
    """
    rows = np.arange(height)[:, None] * grid // height
    cols = np.arange(width)[None, :] * grid // width
    return kept.reshape(grid, grid)[rows, cols]


def token_grid(path: Path, images: np.ndarray, columns: dict[str, np.ndarray], grid: int, title: str) -> Path:
    """Rows: images `[n, h, w]` (uint8 grey); columns: {label: kept mask `[n, grid * grid]` bool}.

    Each panel shows the image with the patches not kept dimmed; an all-kept column is the input.
    """
    n = len(images)
    fig, axes = plt.subplots(n, len(columns), figsize=(1.3 * len(columns), 1.3 * n), squeeze=False)
    for col, (label, kept) in enumerate(columns.items()):
        for row in range(n):
            image = images[row].astype(np.float32) / 255.0
            h, w = image.shape
            mask = pixel_mask(kept[row], grid, h, w)
            shown = np.where(mask, image, 0.15 + 0.2 * image)
            ax = axes[row, col]
            ax.imshow(shown, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
