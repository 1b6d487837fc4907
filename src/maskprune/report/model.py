"""The report's data model: sections of text, tables and figures, and the context every section reads."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskprune.aa_control import AA_TOLERANCE, aa_noisy
from maskprune.config import Params
from maskprune.layout import MODELS_DIR, prepared_dir
from maskprune.report.checks import Check, Curve, above_chance
from maskprune.report.claims import Claim, Outcome
from maskprune.report.results import SeedResult, load_results, per_seed
from maskprune.report.stats import Interval, paired_difference, t_interval


@dataclass
class Section:
    """One section of the report: its blocks in order, ending in a one-line verdict.

    A block is ("text", str), ("table", DataFrame) or ("figure", (PNG path, caption)).
    """

    key: str
    title: str
    verdict: str = ""
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    claim: Claim | None = None  # a paper's claim, decided with every other claim (`claims.conclude`)

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
    best_pruned: str | None  # the pruned model (keep < 1) with the highest mean test top-1 over the seeds
    best_pruned_check: Check | None  # whether it is clearly above chance on every seed: else it is not registered
    outcomes: dict[str, Outcome]  # per claim section: the word, the tests and the checks
    confidence: float
    teachers: dict[str, str | None]  # the sha256 of the weights of each model every seed shares
    seed_table: pd.DataFrame  # per seed, included or not: its shared models' top-1 and weights

    def summary(self) -> dict[str, Any]:
        """What reports/summary.json holds: seeds, excluded seeds, best pruned model and its check, each
        section's verdict line, and per claim its word, tests (with raw and Holm-adjusted p) and checks."""
        return {
            "seeds": self.seeds,
            "teachers": self.teachers,
            "excluded": self.excluded,
            "best_pruned": self.best_pruned,
            "best_pruned_check": self.best_pruned_check.to_json() if self.best_pruned_check else None,
            "alpha": round(1.0 - self.confidence, 10),
            "family_size": sum(len(o.tests) for o in self.outcomes.values()),
            "verdicts": {s.key: s.verdict for s in self.sections},
            "claims": {key: outcome.to_json() for key, outcome in self.outcomes.items()},
        }

    def headline(self) -> dict[str, Any]:
        """What metrics/verdicts.json holds for `dvc exp show`: per claim its word and, per test, the
        mean difference and the Holm-adjusted p."""
        return {
            key: {
                "word": outcome.word,
                **{test["name"]: {"mean": test["mean"], "p_holm": test["p_holm"]} for test in outcome.tests},
            }
            for key, outcome in self.outcomes.items()
        }


class Context:
    """What every section reads: the seeds' results, params, where figures go, the interval settings."""

    def __init__(self, root: Path, params: Params, figures_dir: Path) -> None:
        self.root, self.params, self.figures = root, params, figures_dir
        self.results, self.excluded = load_results(root)
        self.confidence = params.report.confidence
        self.rules, self.checks = params.report.rules, params.report.checks

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

    def stage_metric(self, folder: str, key: str) -> dict[int, float]:
        """{seed: `key` of models/<folder>/metrics.json} (e.g. 'prune/dynamicvit-full-0.5', 'train_kept_fraction')."""
        return self.values(lambda r: r.stage_metrics(folder).get(key))

    def val_curves(self, folders: dict[str, str], phase: str | None = None) -> dict[str, dict[int, Curve]]:
        """{arm: {seed: validation top-1 and lr per epoch}} from each seed's models/<folder>/history.csv (rows of
        `phase` only); an arm without a history on a seed has an empty curve there, which fails the plateau check."""
        curves: dict[str, dict[int, Curve]] = {}
        for arm, folder in folders.items():
            for result in self.results:
                frame = result.csv(MODELS_DIR / folder / "history.csv")
                if frame is not None and phase is not None:
                    frame = frame[frame["phase"] == phase]
                if frame is not None:
                    frame = frame.dropna(subset=["val_top1"])
                curves.setdefault(arm, {})[result.seed] = Curve(
                    [] if frame is None else [float(v) for v in frame["val_top1"]],
                    [] if frame is None else [float(v) for v in frame.get("lr", frame["val_top1"] * float("nan"))],
                )
        return curves

    def above_chance(self, models: list[str]) -> Check:
        """The check that every model in `models` is clearly above chance, on every seed."""
        return above_chance(
            {name: self.model_metric(name, "top1") for name in models}, self.num_classes, self.checks.chance_fraction
        )

    @property
    def num_classes(self) -> int:
        return int(
            json.loads((self.root / prepared_dir(self.params.data.name) / "meta.json").read_text())["num_classes"]
        )


@dataclass(frozen=True)
class SeedRatios:
    """A throughput ratio measured on each seed, each beside its own A/A control.

    Its value is the median over the seeds whose A/A ratio stays within AA_TOLERANCE of 1: a seed
    whose control strays measured noise, and a median is not moved by one outlying seed. With no
    such seed it is the median over all of them, shown as noisy.
    """

    ratios: dict[int, float]  # {seed: ratio}
    aa: dict[int, float]  # {seed: its A/A ratio}; a seed missing here had no A/A control

    @property
    def noisy(self) -> dict[int, float]:
        """{seed: A/A ratio} of the seeds whose control strays."""
        return {seed: aa for seed, aa in sorted(self.aa.items()) if seed in self.ratios and aa_noisy(aa)}

    @property
    def value(self) -> float:
        noisy = self.noisy
        kept = [ratio for seed, ratio in self.ratios.items() if seed not in noisy] or list(self.ratios.values())
        return float(np.median(kept)) if kept else float("nan")

    def text(self) -> str:
        """'1.52x'; '1.50x (left out, A/A off by over 5%: seed 2 0.94)'; 'noisy (1.52x, A/A 1.08)' when
        every seed's control strays; '1.52x (no A/A)' when none had one; '-' when nothing was measured."""
        if not self.ratios:
            return "-"
        shown = f"{self.value:.2f}x"
        if not any(seed in self.aa for seed in self.ratios):
            return f"{shown} (no A/A)"
        noisy = self.noisy
        controls = ", ".join(f"{aa:.2f}" for aa in noisy.values())
        if len(noisy) == len(self.ratios):
            return f"noisy ({shown}, A/A {controls})"
        if noisy:
            seeds = ", ".join(f"seed {seed} {aa:.2f}" for seed, aa in noisy.items())
            return f"{shown} (left out, A/A off by over {AA_TOLERANCE:.0%}: {seeds})"
        return shown


# how the report says SeedRatios aggregates, for the texts of the sections that show one
SEED_RATIOS_RULE = f"the median over seeds, leaving out a seed whose A/A control is more than {AA_TOLERANCE:.0%} from 1"


def mean_over_seeds(values: dict[int, float]) -> float:
    """The plain mean of {seed: value}; nan for none."""
    return float(np.mean(list(values.values()))) if values else float("nan")


def points(iv: Interval) -> str:
    """A fraction's interval as points: '81.20 [80.10, 82.30] (n=3)'."""
    return iv.text(scale=100, digits=2)


def signed_points(iv: Interval) -> str:
    """A difference of fractions as signed points: '+3.20 [+1.10, +5.30] (n=3)'."""
    return iv.text(scale=100, digits=2, signed=True)


def model_rows(ctx: Context, relative: Path, model: str) -> list[tuple[int, pd.DataFrame]]:
    """(seed, rows of `model`) from each seed's long-form plot CSV at `relative`, where it has any."""
    frames = [(r.seed, r.csv(relative)) for r in ctx.results]
    frames = [(s, f[f["model"] == model].reset_index(drop=True)) for s, f in frames if f is not None]
    return [(s, f) for s, f in frames if len(f)]


def mean_curve(
    ctx: Context,
    relative: Path,
    model: str,
    x: str,
    y: str,
) -> tuple[list[float], list[float], list, list] | None:
    """Mean and interval over seeds of `model`'s `y` against `x` in the plot CSV at `relative`: (x, mean, low, high)."""
    frames = model_rows(ctx, relative, model)
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
