"""The report's data model: sections of text, tables and figures, and the context every section reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from maskprune.config import Params
from maskprune.report.results import SeedResult, load_results, per_seed
from maskprune.report.stats import Interval, paired_difference, t_interval

NOT_MEASURED = "not measured"


@dataclass
class Section:
    """One section of the report: its blocks in order, ending in a one-line verdict.

    A block is ("text", str), ("table", DataFrame) or ("figure", (PNG path, caption)).
    """

    key: str
    title: str
    verdict: str = ""
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def text(self, value: str) -> None:
        """Append a paragraph."""
        self.blocks.append(("text", value))

    def table(self, frame: pd.DataFrame) -> None:
        """Append a table, shown without its index."""
        self.blocks.append(("table", frame))

    def figure(self, path: Path, caption: str) -> None:
        """Append the PNG figure at `path` with its caption."""
        self.blocks.append(("figure", (path, caption)))


@dataclass
class Report:
    """The whole report: title, intro paragraphs, sections, and the seeds it aggregates."""

    title: str
    intro: list[str]
    sections: list[Section]
    seeds: list[int]
    excluded: list[dict[str, Any]]
    best_pruned: str  # the pruned model with the highest mean test top-1 over the seeds

    def summary(self) -> dict[str, Any]:
        """What reports/summary.json holds: seeds, excluded seeds, best pruned model, verdict per section."""
        return {
            "seeds": self.seeds,
            "excluded": self.excluded,
            "best_pruned": self.best_pruned,
            "verdicts": {s.key: s.verdict for s in self.sections},
        }


class Context:
    """What every section reads: the seeds' results, params, where figures go, the interval settings."""

    def __init__(self, root: Path, params: Params, figures_dir: Path) -> None:
        self.root, self.params, self.figures = root, params, figures_dir
        self.results, self.excluded = load_results(root)
        self.confidence = params.report.confidence
        self.margin = params.report.margin

    def interval(self, values: dict[int, float]) -> Interval:
        """Mean and Student-t interval of {seed: value} at the report's confidence."""
        return t_interval(values.values(), self.confidence)

    def paired(self, a: dict[int, float], b: dict[int, float]) -> Interval:
        """Interval of b - a, paired by seed, at the report's confidence."""
        return paired_difference(a, b, self.confidence)

    def values(self, fn: Callable[[SeedResult], float | None]) -> dict[int, float]:
        """{seed: fn(result)} over the seeds where `fn` gives a number."""
        return per_seed(self.results, fn)

    def model_metric(self, model: str, key: str) -> dict[int, float]:
        """{seed: metric `key` of evaluated model `model`} (e.g. 'prune/evit-full-0.5', 'top1')."""
        return self.values(lambda r: (r.model(model) or {}).get(key))


def points(iv: Interval) -> str:
    """A fraction's interval as points: '81.20 [80.10, 82.30] (n=3)'."""
    return iv.text(scale=100, digits=2)


def signed_points(iv: Interval) -> str:
    """A difference of fractions as signed points: '+3.20 [+1.10, +5.30] (n=3)'."""
    return iv.text(scale=100, digits=2, signed=True)


def mean_curve(ctx: Context, relative: Path, x: str, y: str) -> tuple[list[float], list[float], list, list] | None:
    """Mean and interval over seeds of `y` against `x` from each seed's CSV at `relative`: (x, mean, low, high)."""
    frames = [(r.seed, r.csv(relative)) for r in ctx.results]
    frames = [(s, f) for s, f in frames if f is not None]
    if not frames:
        return None
    xs = list(frames[0][1][x])
    means, lows, highs = [], [], []
    for i, _ in enumerate(xs):
        iv = t_interval([f[y].iloc[i] for _, f in frames if len(f) > i], ctx.confidence)
        means.append(iv.mean)
        lows.append(iv.low)
        highs.append(iv.high)
    return xs, means, lows, highs


def newest(folder: Path, prefix: str) -> Path | None:
    """The most recently modified `<prefix>*.csv` in `folder`, or None."""
    found = sorted(folder.glob(f"{prefix}*.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
