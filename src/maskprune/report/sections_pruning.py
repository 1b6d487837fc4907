"""The report's sections on token pruning: the init it is trained from, cost against accuracy, token pictures.

A. masked fine-tuning as the init of token pruning (Shi & Wang, arXiv 2310.17177), with the sham arm
E. cost against accuracy for every model, ToMe at matched GMACs included, with the Pareto front (a
   description: no verdict)
T. token pictures: which patches each pruned model keeps, and which the MaskedKD teacher sees
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from maskprune.config import FINETUNE_VARIANTS, PRUNING_METHODS
from maskprune.data.storage import load_prepared
from maskprune.layout import FINETUNE_DIR, PLOTS_DIR, PRUNE_DIR, TEACHER_DIR, PruneVariant, model_name, prepared_dir
from maskprune.report import figures
from maskprune.report.checks import NOT_MEASURED, gmacs_matched, keep_ratio, plateaued, teacher_gap
from maskprune.report.claims import Claim, differences
from maskprune.report.model import (
    SEED_RATIOS_RULE,
    Context,
    Section,
    SeedRatios,
    mean_curve,
    mean_over_seeds,
    points,
    signed_points,
)
from maskprune.report.pareto import family, pareto_front
from maskprune.report.stats import Test


def inference_keep(ctx: Context, names: list[str]) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """Per pruned model and pruning block, the share of the input patches its tokens still come from at
    inference (evaluate's token pictures; a fused token counts for none) on each seed, NaN where a seed
    lacks it; and its target, the keep rate to the power of the block's rank."""
    realised: dict[str, dict[int, float]] = {}
    targets: dict[str, float] = {}
    for name in names:
        keep = PruneVariant.parse(name.partition("/")[2]).keep_rate
        for result in ctx.results:
            tokens = result.evaluate.get("tokens", {})
            blocks = tokens.get("models", {}).get(name, {})
            for rank, block in enumerate(sorted(blocks, key=int), start=1):
                arm = f"{name} after block {block}"
                kept = [sum(patch >= 0 for patch in row) for row in blocks[block]]
                realised.setdefault(arm, {})[result.seed] = sum(kept) / len(kept) / tokens["grid"] ** 2
                targets[arm] = keep**rank
    for seeds in realised.values():
        seeds.update({r.seed: float("nan") for r in ctx.results if r.seed not in seeds})
    return realised, targets


def section_masked_finetuning(ctx: Context) -> Section:
    """A: pruned top-1 from the full and the masked fine-tuned init, paired by seed; the sham arm; occlusion."""
    sec = Section("A", "Masked fine-tuning as the init of token pruning (Shi & Wang, arXiv 2310.17177)")
    inits, rule = ctx.params.prune.inits, ctx.rules.masked_finetuning
    if not {"full", "masked"} <= set(inits):
        sec.verdict = f"{NOT_MEASURED}: prune.inits must include full and masked (it is {inits})"
        return sec

    def pruned(method: str, init: str, keep: float) -> str:
        return model_name(PruneVariant(method, init, keep).folder)

    rows = []
    for method in PRUNING_METHODS:
        for keep in ctx.params.prune.keep_rates:
            full, masked = (ctx.model_metric(pruned(method, init, keep), "top1") for init in ("full", "masked"))
            rows.append(
                {
                    "method": method,
                    "keep rate": f"{keep:g} (sham: nothing dropped)" if keep == 1.0 else f"{keep:g}",
                    "init full": points(ctx.interval(full)),
                    "init masked": points(ctx.interval(masked)),
                    "masked - full (points)": signed_points(ctx.paired(full, masked)),
                }
            )
    sec.text(
        "Test top-1 of every pruned model, mean [95% interval] over seeds, in points; the difference is "
        "paired by seed. The full init is fine-tuned with labels alone; the masked init is fine-tuned on "
        "randomly masked images and distilled from the full one (Shi & Wang). Every pruned model trains "
        f"with KD from models/teacher. The primary setting is {rule.method} at keep {rule.keep_rate:g}; the "
        "other rows are shown without a test."
    )
    sec.table(pd.DataFrame(rows))
    if 1.0 in ctx.params.prune.keep_rates:
        damage = []
        for method in PRUNING_METHODS:
            for init in ("full", "masked"):
                before = ctx.model_metric(f"{FINETUNE_DIR.name}/{init}", "top1")
                after = ctx.model_metric(pruned(method, init, 1.0), "top1")
                damage.append(
                    {
                        "method": method,
                        "init": init,
                        "sham - its init (points)": signed_points(ctx.paired(before, after)),
                    }
                )
        sec.text(
            "The sham arm (keep 1.0: the pruning recipe with nothing dropped) against the model it starts "
            "from: what the recipe itself does, apart from dropping tokens."
        )
        sec.table(pd.DataFrame(damage))
    series = {}
    for method in PRUNING_METHODS:
        for init in ("full", "masked"):
            ivs = [ctx.interval(ctx.model_metric(pruned(method, init, k), "top1")) for k in ctx.params.prune.keep_rates]
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
        curve = mean_curve(ctx, PLOTS_DIR / "occlusion.csv", f"{FINETUNE_DIR.name}/{variant}", "drop_fraction", "top1")
        if curve:
            occlusion[variant] = curve
        areas.append(
            {
                "fine-tuning": variant,
                "occlusion area (0-0.9)": points(
                    ctx.interval(ctx.model_metric(f"{FINETUNE_DIR.name}/{variant}", "occlusion_auc"))
                ),
                "clean top-1": points(ctx.interval(ctx.model_metric(f"{FINETUNE_DIR.name}/{variant}", "top1"))),
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
    arms = {init: pruned(rule.method, init, rule.keep_rate) for init in ("full", "masked")}
    top1 = {init: ctx.model_metric(name, "top1") for init, name in arms.items()}
    checks = [
        teacher_gap(
            ctx.model_metric(TEACHER_DIR.name, "top1"),
            ctx.model_metric(f"{FINETUNE_DIR.name}/full", "top1"),
            ctx.checks.teacher_gap,
        ),
        plateaued(
            ctx.val_curves(
                {
                    "finetune full": f"{FINETUNE_DIR.name}/full",
                    "finetune masked": f"{FINETUNE_DIR.name}/masked",
                    **{name: name for name in arms.values()},
                }
            ),
            ctx.checks.plateau_slope,
        ),
    ]
    if rule.method == "dynamicvit":
        realised = {name: ctx.stage_metric(name, "train_kept_fraction") for name in arms.values()}
        targets = {name: mean_over_seeds(ctx.stage_metric(name, "train_kept_target")) for name in arms.values()}
        checks.append(keep_ratio(realised, targets, ctx.checks.keep_tolerance))
    realised, targets = inference_keep(ctx, list(arms.values()))
    checks.append(keep_ratio(realised, targets, ctx.checks.keep_tolerance, "at inference"))
    checks.append(
        ctx.above_chance([TEACHER_DIR.name, f"{FINETUNE_DIR.name}/full", f"{FINETUNE_DIR.name}/masked", *arms.values()])
    )
    sec.claim = Claim(
        f"{rule.method} at keep {rule.keep_rate:g} from the masked fine-tuned init against the full one",
        [Test("masked init - full init", differences(top1["full"], top1["masked"]), rule.min_effect)],
        checks,
    )
    return sec


def section_cost(ctx: Context) -> Section:
    """E: every model's GMACs and measured speed against top-1, the Pareto front, pruning against ToMe."""
    sec = Section("E", "Cost against accuracy: every model, ToMe included")
    names = [n for n in ctx.results[0].evaluate["models"] if all(r.model(n) for r in ctx.results)]
    pts = []
    for name in names:
        speed = SeedRatios(ctx.model_metric(name, "throughput_ratio"), ctx.model_metric(name, "aa_ratio"))
        pts.append(
            {
                "name": name,
                "family": family(name),
                "top1": ctx.interval(ctx.model_metric(name, "top1")).mean * 100,  # points, as every table
                "gmacs": ctx.interval(ctx.model_metric(name, "gmacs")).mean,
                "throughput_ratio": speed.value,
                "throughput": speed.text(),
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
            "test top-1 (%)",
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
            "measured img/s vs the unpruned student",
            "test top-1 (%)",
            "Measured speed against accuracy",
        ),
        f"Test top-1 against measured throughput ({SEED_RATIOS_RULE}), as a ratio to one reference for every "
        "model, the unpruned "
        "student timed beside it in the same process (a teacher's is below 1).",
    )
    front_rows = sorted((p for p in pts if p["name"] in front), key=lambda p: p["gmacs"])
    sec.text("The Pareto front by GMACs (no other model is both cheaper and more accurate):")
    sec.table(
        pd.DataFrame(front_rows)[["name", "gmacs", "throughput", "top1"]]
        .rename(columns={"gmacs": "GMACs", "throughput": "img/s vs the unpruned student", "top1": "test top-1"})
        .round({"GMACs": 4, "test top-1": 2})
    )
    tome = [n for n in names if n.startswith("tome/")]
    if not tome:
        sec.verdict = f"{NOT_MEASURED}: no ToMe model was matched to a pruned model"
        return sec
    rows, pairs, gaps = [], {}, {}
    for name in tome:
        target = model_name(PRUNE_DIR / ctx.results[0].model(name)["matched_to"])
        gap = ctx.paired(ctx.model_metric(target, "top1"), ctx.model_metric(name, "top1"))
        gaps[name] = gap.mean
        pairs[f"{name} vs {target}"] = {
            s: (ctx.model_metric(name, "gmacs")[s], ctx.model_metric(target, "gmacs")[s])
            for s in ctx.model_metric(name, "gmacs")
            if s in ctx.model_metric(target, "gmacs")
        }
        rows.append(
            {
                "ToMe (training-free)": name,
                "schedule r per block": " ".join(str(r) for r in ctx.results[0].model(name).get("tome_schedule", [])),
                "matched to": target,
                "GMACs gap": f"{ctx.interval(ctx.model_metric(name, 'gmacs_gap')).mean:+.1%}",
                "ToMe - pruned (points)": signed_points(gap),
            }
        )
    sec.text(
        "ToMe applied to each pruned model's unpruned init, its merge schedule (tokens merged per block) chosen "
        "so that its GMACs come within the matched-cost tolerance of the pruned model's; test top-1 paired by seed."
    )
    sec.table(pd.DataFrame(rows))
    matched = gmacs_matched(pairs, ctx.checks.gmacs_tolerance)
    mean_gap = float(np.mean(list(gaps.values())))
    sec.verdict = (
        "A description, not a verdict (no paper's claim here is about ToMe; ToMe's own claim is that merging "
        f"without training comes close to trained pruning): training-free ToMe minus trained pruning at matched "
        f"GMACs, mean over {len(gaps)} pairs {mean_gap * 100:+.2f} points; GMACs "
        f"{'matched' if matched.passed else 'NOT matched: ' + matched.detail}; on the Pareto front: {', '.join(front)}."
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
    images = data.splits["test"].images_at(torch.tensor(tokens["images"])).numpy()[:, 0]
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
