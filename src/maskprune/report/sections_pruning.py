"""The report's sections on token pruning: the init it is trained from, cost against accuracy, token pictures.

A. masked fine-tuning as the init of token pruning (Shi & Wang, arXiv 2310.17177)
E. cost against accuracy for every model, ToMe included, with the Pareto front
T. token pictures: which patches each pruned model keeps, and which the MaskedKD teacher sees
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from maskprune.config import FINETUNE_VARIANTS, PRUNING_METHODS
from maskprune.data.loader import load_prepared
from maskprune.layout import PLOTS_DIR, PRUNE_DIR, PruneVariant, prepared_dir
from maskprune.report import figures
from maskprune.report.model import NOT_MEASURED, Context, Section, mean_curve, points, signed_points
from maskprune.report.pareto import family, pareto_front
from maskprune.report.stats import directional_verdict, t_interval


def section_masked_finetuning(ctx: Context) -> Section:
    """A: pruned top-1 from the full and the masked fine-tuned init, paired by seed; occlusion robustness."""
    sec = Section("A", "Masked fine-tuning as the init of token pruning (Shi & Wang, arXiv 2310.17177)")
    inits = ctx.params.prune.inits
    if not {"full", "masked"} <= set(inits):
        sec.verdict = f"{NOT_MEASURED}: prune.inits must include full and masked (it is {inits})"
        return sec
    rows, per_setting = [], []
    for method in PRUNING_METHODS:
        for keep in ctx.params.prune.keep_rates:

            def top1(init: str, m: str = method, k: float = keep) -> dict[int, float]:
                return ctx.model_metric(f"{PRUNE_DIR.name}/{PruneVariant(m, init, k).name}", "top1")

            full, masked = top1("full"), top1("masked")
            diff = ctx.paired(full, masked)
            per_setting.append((full, masked))
            rows.append(
                {
                    "method": method,
                    "keep rate": keep,
                    "init full": points(ctx.interval(full)),
                    "init masked": points(ctx.interval(masked)),
                    "masked - full (points)": signed_points(diff),
                    "verdict": directional_verdict(diff),
                }
            )
    seeds = sorted(set.intersection(*(set(f) & set(m) for f, m in per_setting)))
    overall = t_interval([np.mean([m[s] - f[s] for f, m in per_setting]) for s in seeds], ctx.confidence)
    sec.text(
        "Test top-1 of every pruned model, mean [95% interval] over seeds, in points; the difference is "
        "paired by seed. Both inits are fine-tuned with KD from the same full-image teacher, so they "
        "differ only by the masking."
    )
    sec.table(pd.DataFrame(rows))
    series = {}
    for method in PRUNING_METHODS:
        for init in ("full", "masked"):
            ivs = [
                ctx.interval(ctx.model_metric(f"{PRUNE_DIR.name}/{PruneVariant(method, init, k).name}", "top1"))
                for k in ctx.params.prune.keep_rates
            ]
            series[f"{method}, init {init}"] = (
                list(ctx.params.prune.keep_rates),
                [iv.mean for iv in ivs],
                [iv.low for iv in ivs],
                [iv.high for iv in ivs],
            )
    sec.figure(
        figures.curves(ctx.figures / "a-pruned-top1.png", series, "keep rate", "test top-1", "Pruned top-1 by init"),
        "Pruned top-1 by keep rate and init (bands: 95% intervals).",
    )
    occlusion, areas = {}, []
    for variant in FINETUNE_VARIANTS:
        curve = mean_curve(ctx, PLOTS_DIR / "occlusion" / f"finetune-{variant}.csv", "drop_fraction", "top1")
        if curve:
            occlusion[variant] = curve
        areas.append(
            {
                "fine-tuning": variant,
                "occlusion area (0-0.9)": points(
                    ctx.interval(ctx.model_metric(f"finetune/{variant}", "occlusion_auc"))
                ),
                "clean top-1": points(ctx.interval(ctx.model_metric(f"finetune/{variant}", "top1"))),
            }
        )
    if occlusion:
        sec.figure(
            figures.curves(
                ctx.figures / "a-occlusion.png",
                occlusion,
                "fraction of patches removed",
                "test top-1",
                "Occlusion robustness of the fine-tuned students",
            ),
            "Top-1 when a random fraction of patches is removed at the input.",
        )
    sec.table(pd.DataFrame(areas))
    sec.verdict = (
        f"Masked fine-tuning as the init changes pruned top-1 by {signed_points(overall)} points "
        f"(mean over {len(per_setting)} method x keep settings): {directional_verdict(overall)}."
    )
    return sec


def section_cost(ctx: Context) -> Section:
    """E: every model's GMACs and measured speed against top-1, the Pareto front, pruning against ToMe."""
    sec = Section("E", "Cost against accuracy: every model, ToMe included")
    names = [n for n in ctx.results[0].evaluate["models"] if all(r.model(n) for r in ctx.results)]
    pts = []
    for name in names:
        pts.append(
            {
                "name": name,
                "family": family(name),
                "top1": ctx.interval(ctx.model_metric(name, "top1")).mean,
                "gmacs": ctx.interval(ctx.model_metric(name, "gmacs")).mean,
                "throughput_ratio": ctx.interval(ctx.model_metric(name, "throughput_ratio")).mean,
            }
        )
    front = pareto_front(pts, "gmacs", "top1")
    speed_front = pareto_front(pts, "throughput_ratio", "top1", lower_x_better=False)
    sec.figure(
        figures.pareto_scatter(
            ctx.figures / "e-gmacs-top1.png",
            pts,
            "gmacs",
            "top1",
            front,
            "GMACs per image",
            "test top-1",
            "Cost against accuracy",
        ),
        "Test top-1 against GMACs (means over seeds); ringed: the Pareto front.",
    )
    sec.figure(
        figures.pareto_scatter(
            ctx.figures / "e-throughput-top1.png",
            pts,
            "throughput_ratio",
            "top1",
            speed_front,
            "measured img/s vs the unpruned architecture",
            "test top-1",
            "Measured speed against accuracy",
        ),
        "Test top-1 against measured throughput, as a ratio to the same architecture unpruned timed in "
        "the same process.",
    )
    front_rows = sorted((p for p in pts if p["name"] in front), key=lambda p: p["gmacs"])
    sec.text("The Pareto front by GMACs (no other model is both cheaper and more accurate):")
    sec.table(pd.DataFrame(front_rows)[["name", "gmacs", "throughput_ratio", "top1"]].round(4))
    diffs: dict[int, list[float]] = {}
    for result in ctx.results:
        for name, entry in result.evaluate["models"].items():
            if name.startswith("tome/"):
                for matched in entry.get("matched_to", []):
                    pruned = result.model(f"prune/{matched}")
                    if pruned:
                        diffs.setdefault(result.seed, []).append(pruned["top1"] - entry["top1"])
    if not diffs:
        sec.verdict = f"{NOT_MEASURED}: no ToMe model was matched to a pruned model"
        return sec
    gain = t_interval([np.mean(v) for v in diffs.values()], ctx.confidence)
    sec.verdict = (
        f"Trained token pruning against training-free ToMe at matched GMACs: {signed_points(gain)} points "
        f"(mean over {len(next(iter(diffs.values())))} pruned models): {directional_verdict(gain)}; "
        f"on the Pareto front: {', '.join(front)}."
    )
    return sec


def section_tokens(ctx: Context) -> Section:
    """T: the patches each pruned model keeps per block, and those the MaskedKD teacher sees (workspace seed)."""
    sec = Section("T", "Token pictures: which patches are kept")
    workspace = next(r for r in ctx.results if r.root == ctx.root)
    tokens = workspace.evaluate.get("tokens")
    if not tokens:
        sec.verdict = f"{NOT_MEASURED}: metrics/evaluate.json holds no token pictures"
        return sec
    data = load_prepared(ctx.root / prepared_dir(ctx.params.data.name), splits=("test",))
    images = data.splits["test"].images[tokens["images"]].numpy()[:, 0]
    grid = tokens["grid"]
    every = np.ones((len(images), grid * grid), dtype=bool)

    def mask(rows: list[list[int]]) -> np.ndarray:
        kept = np.zeros((len(rows), grid * grid), dtype=bool)
        for i, row in enumerate(rows):
            kept[i, [p for p in row if p >= 0]] = True
        return kept

    for name, blocks in tokens["models"].items():
        columns = {"input": every, **{f"after block {b}": mask(rows) for b, rows in blocks.items()}}
        stem = name.replace("/", "-")
        sec.figure(
            figures.token_grid(ctx.figures / f"tokens-{stem}.png", images, columns, grid, name),
            f"{name}: the patches its tokens come from after each pruning block (dimmed: dropped; a fused "
            "token is not drawn).",
        )
    teacher = tokens["maskedkd_teacher"]
    sec.figure(
        figures.token_grid(
            ctx.figures / "tokens-maskedkd-teacher.png",
            images,
            {
                "input": every,
                f"teacher sees ({teacher['keep']:g}, {teacher['criterion']})": mask(teacher["patches"]),
            },
            grid,
            "MaskedKD teacher",
        ),
        "The patches the MaskedKD teacher sees, chosen by the fine-tuned student's last-block [CLS] attention.",
    )
    sec.verdict = (
        f"{len(tokens['models'])} pruned models and the MaskedKD teacher on {len(images)} test images "
        f"(seed {workspace.seed})."
    )
    return sec
