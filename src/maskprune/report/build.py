"""The report: does masking make pruned ViTs better and cheaper on this data? One section per paper.

Sections (each ends in a one-line verdict computed from the numbers: for A-D the paper's claim, its
checks and pre-registered tests, decided together in `maskprune.report.claims`):
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

import time
from pathlib import Path
from typing import Any

import pandas as pd

from maskprune import atomic
from maskprune.config import Params
from maskprune.layout import PRUNE_DIR, REPORT_DIR, REPORT_FIGURES_DIR, VERDICTS_FILE, PruneVariant
from maskprune.report.claims import Outcome, conclude, counted, format_p, print_scale
from maskprune.report.model import Context, Report, Section
from maskprune.report.render import render_html, render_markdown
from maskprune.report.results import SHARED_MODELS, shared_weights
from maskprune.report.sections_pruning import section_cost, section_masked_finetuning, section_tokens
from maskprune.report.sections_training import section_maskedkd, section_mto, section_task_agnostic
from maskprune.report.stats import CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE, REPRODUCED

WORDS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)


def chance_warning(ctx: Context) -> str | None:
    """One line naming the models too close to chance for their comparisons to mean much, or None."""
    check = ctx.above_chance(list(ctx.results[0].evaluate["models"]))
    if check.passed:
        return None
    return f"Warning: models barely above chance make the comparisons that involve them say little: {check.detail}."


def add_checks(sec: Section, outcome: Outcome) -> None:
    """Append the claim's checks and tests to its section, as tables."""
    sec.text("Checks before the verdict (each must pass on every seed):")
    sec.table(
        pd.DataFrame(
            [
                {"check": c["name"], "passed": "yes" if c["passed"] else "NO", "numbers": c["detail"]}
                for c in outcome.checks
            ]
        )
    )
    (scale, digits), unit = print_scale(outcome.points), "in points of test top-1, " if outcome.points else ""
    verdict = (
        "; a check above fails, so each word is what its test alone says, not a verdict"
        if outcome.word == NOT_TESTABLE
        else ""
    )
    sec.text(
        f"The pre-registered tests ({unit}two-sided Student-t on the paired differences; p Holm-adjusted over "
        f"every claim; for an inconclusive one, the seeds that would decide it at its mean and spread{verdict}):"
    )
    sec.table(
        pd.DataFrame(
            [
                {
                    "test": t["name"],
                    **{
                        column: None if t[key] is None else round(t[key] * scale, digits)
                        for column, key in {"mean": "mean", "low": "low", "high": "high", "needs >": "delta"}.items()
                    },
                    "n": t["n"],
                    "p": None if t["p"] is None else format_p(t["p"]),
                    "Holm p": None if t["p_holm"] is None else format_p(t["p_holm"]),
                    "word": t["word"],
                    "seeds to decide": t["seeds_to_decide"] or "-",
                }
                for t in outcome.tests
            ]
        )
    )


def seed_table(ctx: Context) -> pd.DataFrame:
    """One row per seed, included or excluded: each shared model's test top-1 and weights (sha256, 12
    digits), and the precision its stages and evaluate ran at."""
    seeds = [
        (
            r.seed,
            shared_weights(r.evaluate),
            {n: (r.model(n) or {}).get("top1") for n in SHARED_MODELS},
            r.precision,
            "included",
        )
        for r in ctx.results
    ]
    seeds += [
        (x.get("seed", "?"), x["weights"], x["top1"], x.get("precision"), "excluded")
        for x in ctx.excluded
        if "weights" in x
    ]
    rows = []
    for seed, weights, top1, precision, status in seeds:
        row: dict[str, Any] = {"seed": seed}
        for name in SHARED_MODELS:
            row[f"{name} top-1"] = "-" if top1[name] is None else f"{top1[name] * 100:.2f}"
            row[f"{name} weights"] = (weights[name] or "not recorded")[:12]
        rows.append({**row, "precision": precision or "not recorded", "status": status})
    return pd.DataFrame(rows)


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
    outcomes = conclude({sec.key: sec.claim for sec in sections if sec.claim}, ctx.confidence)
    for sec in sections:
        if sec.key in outcomes:
            add_checks(sec, outcomes[sec.key])
            sec.verdict = outcomes[sec.key].line
    family = counted(sum(len(o.tests) for o in outcomes.values()), "pre-registered test")
    intro.append(
        f"Verdicts: {', '.join(WORDS)}. A claim is tested only after its checks pass; its tests run at alpha "
        f"{1 - ctx.confidence:.2f} after Holm-Bonferroni over all {family} "
        "(report.rules in params.yaml, with their sources)."
    )
    pruned = [  # keep 1.0 is the sham arm: it drops nothing, so it is no pruned model
        name
        for name in ctx.results[0].evaluate["models"]
        if name.startswith(f"{PRUNE_DIR.name}/") and PruneVariant.parse(name.partition("/")[2]).keep_rate < 1
    ]
    best = max(pruned, key=lambda n: ctx.interval(ctx.model_metric(n, "top1")).mean) if pruned else None
    return Report(
        "maskprune report: does masking make pruned ViTs better and cheaper?",
        intro,
        sections,
        [r.seed for r in ctx.results],
        ctx.excluded,
        best,
        ctx.above_chance([best]) if best else None,
        outcomes,
        ctx.confidence,
        shared_weights(ctx.results[0].evaluate),
        seed_table(ctx),
    )


def write_report(root: Path, params: Params) -> Report:
    """Build the report; write reports/report.{md,html}, reports/figures/*.png, reports/summary.json and
    metrics/verdicts.json.

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
    atomic.write_json(root / VERDICTS_FILE, report.headline())
    return report
