"""The report: does masking make pruned ViTs better and cheaper on this data? One section per paper.

Sections (each ends in a one-line verdict computed from the numbers, see `maskprune.report.stats`):
  A. masked fine-tuning as the init of token pruning (Shi & Wang, arXiv 2310.17177)
  B. MaskedKD: a teacher that sees only the patches the student attends to (Son et al., ECCV 2024)
  C. task-agnostic KD into ViT and EViT students (Lu & Nakamura)
  D. MTO: masked-token optimisation in MAE / SimMIM pre-training (Choi et al., ECCV 2024)
  E. cost against accuracy for every model, ToMe included, with the Pareto front
  and token pictures: which patches each pruned model keeps, and which the MaskedKD teacher sees.
Every number aggregates the seeds in `maskprune.report.results` (mean and Student-t interval;
paired differences between the compared arms). Written as reports/report.md (figures as files) and
reports/report.html (self-contained: figures embedded, no network resource).

The sections are built in `sections_pruning` (A, E, T) and `sections_training` (B, C, D) from the
`model` they share, and rendered by `render`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from maskprune import atomic
from maskprune.config import Params
from maskprune.layout import REPORT_DIR, REPORT_FIGURES_DIR, prepared_dir
from maskprune.report.model import Context, Report
from maskprune.report.render import render_html, render_markdown
from maskprune.report.sections_pruning import section_cost, section_masked_finetuning, section_tokens
from maskprune.report.sections_training import section_maskedkd, section_mto, section_task_agnostic


def near_chance(top1: dict[str, float], num_classes: int) -> list[str]:
    """Models whose mean test top-1 (a fraction) has not gone a tenth of the way from chance to 100%,
    worst first: below 1/k + 0.1 (1 - 1/k) for k classes (0.19 for 10 classes, 0.55 for 2)."""
    chance = 1.0 / num_classes
    floor = chance + 0.1 * (1.0 - chance)
    return sorted((name for name, value in top1.items() if value < floor), key=lambda name: top1[name])


def chance_warning(ctx: Context) -> str | None:
    """One line naming the models too close to chance for their comparisons to mean much, or None."""
    meta = json.loads((ctx.root / prepared_dir(ctx.params.data.name) / "meta.json").read_text())
    per_model = {n: ctx.model_metric(n, "top1") for n in ctx.results[0].evaluate["models"]}
    top1 = {n: ctx.interval(values).mean for n, values in per_model.items() if values}
    low = near_chance(top1, meta["num_classes"])
    if not low:
        return None
    listed = ", ".join(f"{n} {top1[n]:.1%}" for n in low)
    return (
        f"Warning: {len(low)} of {len(top1)} models are barely above chance ({meta['num_classes']} classes: "
        f"chance {1 / meta['num_classes']:.1%}), so the comparisons that involve them say little: {listed}."
    )


def build_report(root: Path, params: Params, figures_dir: Path) -> Report:
    """The report of the workspace at `root` and its comparable seeds, its figures drawn in `figures_dir`."""
    ctx = Context(root, params, figures_dir)
    seeds = ", ".join(str(r.seed) for r in ctx.results)
    intro = [
        f"Data: `{params.data.name}`; profile `{params.profile}`; seeds: {seeds} ({len(ctx.results)}); "
        f"intervals: {params.report.confidence:.0%} Student-t over seeds; differences paired by seed. "
        f"Made {time.strftime('%Y-%m-%d %H:%M')}."
    ]
    if len(ctx.results) < 3:
        intro.append("Fewer than 3 seeds: run `python -m flows.seeds` for the intervals the verdicts need.")
    for item in ctx.excluded:
        intro.append(f"Excluded {item['folder']}: {item['reason']}.")
    warning = chance_warning(ctx)
    if warning:
        intro.append(warning)
    sections = [
        section_masked_finetuning(ctx),
        section_maskedkd(ctx),
        section_task_agnostic(ctx),
        section_mto(ctx),
        section_cost(ctx),
        section_tokens(ctx),
    ]
    pruned = [n for n in ctx.results[0].evaluate["models"] if n.startswith("prune/")]
    best = max(pruned, key=lambda n: ctx.interval(ctx.model_metric(n, "top1")).mean)
    return Report(
        "maskprune report: does masking make pruned ViTs better and cheaper?",
        intro,
        sections,
        [r.seed for r in ctx.results],
        ctx.excluded,
        best,
    )


def write_report(root: Path, params: Params) -> Report:
    """Build the report and write reports/report.md, reports/report.html and reports/figures/*.png.

    The figures are drawn into a temporary folder that replaces reports/figures/ whole, so the
    report never refers to a figure of another run.
    """
    out = root / REPORT_DIR
    with atomic.atomic_dir(root / REPORT_FIGURES_DIR) as drawn:
        report = build_report(root, params, drawn)
        markdown, page = render_markdown(report), render_html(report)
    atomic.write_text(out / "report.md", markdown)
    atomic.write_text(out / "report.html", page)
    atomic.write_json(out / "summary.json", report.summary())
    return report
