"""The report's sections on training with masks: MaskedKD, task-agnostic KD, MTO pre-training.

B. MaskedKD: a teacher that sees only the patches the student attends to (Son et al., ECCV 2024)
C. task-agnostic KD into ViT and EViT students (Lu & Nakamura)
D. MTO: masked-token optimisation in MAE / SimMIM pre-training (Choi et al., ECCV 2024)
"""

from __future__ import annotations

import pandas as pd

from maskprune.config import PRETRAIN_LOSSES
from maskprune.layout import PLOTS_DIR, SWEEPS_DIR
from maskprune.report import figures
from maskprune.report.model import NOT_MEASURED, Context, Section, mean_curve, newest, points, signed_points
from maskprune.report.stats import Interval, directional_verdict, non_inferiority_verdict


def section_maskedkd(ctx: Context) -> Section:
    """B: student top-1 and teacher cost of MaskedKD against full-image KD; the keep x criterion sweep."""
    sec = Section("B", "MaskedKD: the teacher sees only what the student attends to (Son et al., ECCV 2024)")
    cfg = ctx.params.finetune
    arms = {
        "full": "full image (keep 1.0)",
        "masked_kd": f"MaskedKD (keep {cfg.masked_kd.teacher_keep:g}, {cfg.masked_kd.criterion})",
    }
    rows = []
    for variant, label in arms.items():

        def stage(key: str, v: str = variant) -> Interval:
            return ctx.interval(ctx.values(lambda r: r.stage_metrics(f"finetune/{v}").get(key)))

        rows.append(
            {
                "teacher sees": label,
                "student top-1": points(ctx.interval(ctx.model_metric(f"finetune/{variant}", "top1"))),
                "teacher GMACs / image": f"{stage('teacher_gmacs_per_image').mean:.4f}",
                "teacher GMACs vs full": f"{stage('teacher_gmacs_ratio').mean:.2f}x",
                "teacher img/s vs full": f"{stage('teacher_throughput_ratio').mean:.2f}x",
                "training TFLOPs": f"{stage('train_tflops').mean:.2f}",
            }
        )
    sec.text(
        "Student test top-1 (mean [95% interval] over seeds, points) and the training cost; the teacher's "
        "GMACs are counted as it runs, its throughput measured against the full-image teacher in one process."
    )
    sec.table(pd.DataFrame(rows))
    sweep = newest(ctx.root / SWEEPS_DIR, "mkd")
    if sweep is not None:
        table = pd.read_csv(sweep)
        sec.text(f"Teacher keep ratio x patch criterion (`make sweep`, one seed, {sweep.name}; validation top-1):")
        shown = table[
            [
                "teacher_keep",
                "criterion",
                "val_top1",
                "teacher_gmacs_per_image",
                "teacher_throughput_ratio",
                "train_tflops",
            ]
        ]
        sec.table(shown.round(4))
        series = {}
        for criterion, group in table[table["criterion"] != "none"].groupby("criterion"):
            group = pd.concat([table[table["criterion"] == "none"], group]).sort_values("teacher_gmacs_per_image")
            series[criterion] = (
                list(group["teacher_gmacs_per_image"]),
                list(group["val_top1"]),
                [None] * len(group),
                [None] * len(group),
            )
        if series:
            sec.figure(
                figures.curves(
                    ctx.figures / "b-maskedkd-sweep.png",
                    series,
                    "teacher GMACs per image",
                    "student validation top-1",
                    "MaskedKD: accuracy against teacher cost",
                ),
                f"Student accuracy by teacher cost and patch criterion ({sweep.name}).",
            )
    else:
        sec.text("The keep ratio x criterion sweep has not been run here: `make sweep`.")
    if not cfg.full.kd:
        sec.verdict = f"{NOT_MEASURED}: finetune.full.kd is false, so the full arm has no teacher to compare with"
        return sec
    diff = ctx.paired(ctx.model_metric("finetune/full", "top1"), ctx.model_metric("finetune/masked_kd", "top1"))
    ratio = ctx.interval(ctx.values(lambda r: r.stage_metrics("finetune/masked_kd").get("teacher_gmacs_ratio"))).mean
    speed = ctx.interval(
        ctx.values(lambda r: r.stage_metrics("finetune/masked_kd").get("teacher_throughput_ratio"))
    ).mean
    sec.verdict = (
        f"With the teacher on {cfg.masked_kd.teacher_keep:.0%} of the patches ({ratio:.2f}x its GMACs, "
        f"{speed:.2f}x its throughput), student top-1 changes by {signed_points(diff)} points against "
        f"full-image KD (non-inferiority margin {ctx.margin * 100:.1f}): "
        f"{non_inferiority_verdict(diff, ctx.margin)}."
    )
    return sec


def section_task_agnostic(ctx: Context) -> Section:
    """C: label-free KD into ViT and EViT students, fine-tuned and linearly probed; EViT against ViT."""
    sec = Section("C", "Task-agnostic KD into ViT and EViT students (Lu & Nakamura)")
    cfg = ctx.params.distill
    rows = []
    for student in cfg.students:
        for target in cfg.targets:
            name = f"distill/{student}-{target}"
            first = ctx.results[0].model(f"{name}/finetune") or {}
            rows.append(
                {
                    "student": student if student == "vit" else f"evit (keep {cfg.keep_rate:g})",
                    "target": target,
                    "params (M)": f"{first.get('params_m', float('nan')):.2f}",
                    "GMACs": f"{first.get('gmacs', float('nan')):.4f}",
                    "img/s vs unpruned": f"{first.get('throughput_ratio', float('nan')):.2f}x",
                    "fine-tune top-1": points(ctx.interval(ctx.model_metric(f"{name}/finetune", "top1"))),
                    "linear-probe top-1": points(ctx.interval(ctx.model_metric(f"{name}/probe", "top1"))),
                }
            )
    sec.text(
        f"Students distilled from `{cfg.teacher}` without labels, then fine-tuned with labels or probed "
        "linearly on frozen features; test top-1, mean [95% interval] over seeds, points."
    )
    sec.table(pd.DataFrame(rows))
    if not {"vit", "evit"} <= set(cfg.students):
        sec.verdict = f"{NOT_MEASURED}: distill.students must include vit and evit"
        return sec
    target = "cls_tokens" if "cls_tokens" in cfg.targets else cfg.targets[0]
    vit = ctx.model_metric(f"distill/vit-{target}/finetune", "top1")
    evit = ctx.model_metric(f"distill/evit-{target}/finetune", "top1")
    gmacs = ctx.interval(ctx.model_metric(f"distill/evit-{target}/finetune", "gmacs_ratio")).mean
    speed = ctx.interval(ctx.model_metric(f"distill/evit-{target}/finetune", "throughput_ratio")).mean
    diff = ctx.paired(vit, evit)
    sec.verdict = (
        f"The EViT student ({gmacs:.2f}x the GMACs, {speed:.2f}x the throughput of the unpruned student) "
        f"changes fine-tuned top-1 by {signed_points(diff)} points against the ViT student ({target} "
        f"target; non-inferiority margin {ctx.margin * 100:.1f}): {non_inferiority_verdict(diff, ctx.margin)}."
    )
    return sec


def section_mto(ctx: Context) -> Section:
    """D: MTO against the baseline per MIM objective: final probe, RAUC, convergence, heterogeneity."""
    sec = Section("D", "MTO: masked-token optimisation in MIM pre-training (Choi et al., ECCV 2024)")
    verdicts, rows = [], []
    for objective in ctx.params.pretrain.objectives:

        def column(key: str, o: str = objective) -> dict[int, float]:
            return ctx.values(
                lambda one: next((row.get(key) for row in one.evaluate["mto"] if row["objective"] == o), None)
            )

        base, mto = column("baseline_final_top1"), column("mto_final_top1")
        rauc_keys = [
            k
            for k in next(r for r in ctx.results[0].evaluate["mto"] if r["objective"] == objective)
            if k.startswith("rauc_")
        ]
        reached = [
            r.get("mto_epochs_to_baseline_final")
            for res in ctx.results
            for r in res.evaluate["mto"]
            if r["objective"] == objective
        ]
        row = {
            "objective": objective,
            "baseline final probe": points(ctx.interval(base)),
            "MTO final probe": points(ctx.interval(mto)),
            "MTO - baseline": signed_points(ctx.paired(base, mto)),
        }
        for key in rauc_keys:
            row[key.replace("rauc_", "RAUC epochs ").replace("_", "-")] = (
                ctx.interval(column(key)).text(digits=3) if column(key) else "undefined"
            )
        row["epochs for MTO to reach the baseline's final"] = ", ".join(
            "never" if e is None else f"{e:.1f}" for e in reached
        )
        rows.append(row)
        if rauc_keys and column(rauc_keys[0]):
            rauc = ctx.interval(column(rauc_keys[0]))
            verdicts.append(f"{objective} RAUC {rauc.text(digits=3)}: {directional_verdict(rauc)}")
        else:
            verdicts.append(f"{objective}: RAUC undefined (the baseline did not improve)")
        curves = {}
        for loss in PRETRAIN_LOSSES:
            curve = mean_curve(ctx, PLOTS_DIR / "pretrain" / f"{objective}.csv", "epoch", f"{loss}_probe_top1")
            if curve:
                curves[f"{objective} {loss}"] = curve
        if curves:
            sec.figure(
                figures.curves(
                    ctx.figures / f"d-{objective}-probe.png",
                    curves,
                    "pre-training epoch",
                    "linear-probe test top-1",
                    f"{objective}: convergence with and without MTO",
                ),
                f"Per-epoch linear-probe accuracy of the {objective} encoder (bands: 95% intervals).",
            )
        frames = [f for r in ctx.results if (f := r.csv(PLOTS_DIR / "heterogeneity" / f"{objective}.csv")) is not None]
        if frames:
            mean = pd.concat(frames).groupby("layer").mean()
            sec.figure(
                figures.grouped_bars(
                    ctx.figures / f"d-{objective}-heterogeneity.png",
                    [str(i) for i in mean.index],
                    {"baseline": list(mean["baseline_h"]), "MTO": list(mean["mto_h"])},
                    "H (nats)",
                    f"{objective}: heterogeneity per mask-carrying layer",
                ),
                "Last-epoch H per layer (0 = the input embedding), mean over seeds.",
            )
    sec.text(
        "Final linear-probe test top-1 (points), RAUC(baseline, MTO) per epoch range (0 = equal curves, "
        "> 0: MTO ahead), and per seed the epoch at which MTO reaches the baseline's final accuracy."
    )
    sec.table(pd.DataFrame(rows))
    ablation = newest(ctx.root / SWEEPS_DIR, "mto")
    if ablation is not None:
        sec.text(f"Loss ablation (`python -m flows.mto_ablation`, one seed, {ablation.name}):")
        sec.table(pd.read_csv(ablation).round(4))
    else:
        sec.text("The loss ablation has not been run here: `python -m flows.mto_ablation`.")
    sec.verdict = "MTO against the baseline: " + "; ".join(verdicts) + "."
    return sec
