"""The report's sections on training with masks: MaskedKD, task-agnostic KD, MTO pre-training.

B. MaskedKD: a teacher that sees only the patches the student attends to (Son et al., ECCV 2024),
   with its no-KD arm and its random-mask control
C. task-agnostic KD into ViT and EViT students (Lu & Nakamura), with scratch students as the control
D. MTO: masked-token optimisation in MAE / SimMIM pre-training (Choi et al., ECCV 2024), beside the
   floors of its probe (raw pixels, a randomly initialised encoder)
Each states its claim (`claims.Claim`): the pre-registered tests and the checks they need.
"""

from __future__ import annotations

import math

import pandas as pd

from maskprune.config import PRETRAIN_LOSSES
from maskprune.layout import (
    FINETUNE_DIR,
    MODELS_DIR,
    PLOTS_DIR,
    PRETRAIN_DIR,
    SWEEPS_DIR,
    TEACHER_DIR,
    DistillVariant,
    distill_variants,
    model_name,
    pretrain_variants,
)
from maskprune.report import figures
from maskprune.report.checks import (
    NOT_MEASURED,
    Collapse,
    clears_floor,
    heterogeneity_falls,
    not_collapsed,
    plateaued,
    rauc_defined,
    teacher_gap,
    teacher_larger,
)
from maskprune.report.claims import Claim, differences
from maskprune.report.model import (
    SEED_RATIOS_RULE,
    Context,
    Section,
    SeedRatios,
    mean_curve,
    model_rows,
    newest,
    points,
    signed_points,
)
from maskprune.report.stats import Test

MASKEDKD_ARMS = ("full", "full_kd", "masked_kd", "random_kd")
TEACHER_COLUMNS = ("teacher GMACs / image", "teacher GMACs vs full", "teacher img/s vs full")


def section_maskedkd(ctx: Context) -> Section:
    """B: MaskedKD against full-image KD (non-inferiority), KD against no KD, and the random-mask control."""
    sec = Section("B", "MaskedKD: the teacher sees only what the student attends to (Son et al., ECCV 2024)")
    cfg, rule = ctx.params.finetune, ctx.rules.maskedkd
    keep = cfg.masked_kd.teacher_keep
    labels = {
        "full": "no teacher (labels only)",
        "full_kd": "full image (keep 1.0)",
        "masked_kd": f"MaskedKD (keep {keep:g}, {cfg.masked_kd.criterion})",
        "random_kd": f"random patches (keep {keep:g})",
    }
    alone = {  # the teacher's own test top-1 on what it sees in each arm
        "full_kd": ctx.model_metric(TEACHER_DIR.name, "top1"),
        **{
            arm: ctx.values(lambda one, a=arm: one.evaluate.get("masked_teacher_top1", {}).get(a))
            for arm in ("masked_kd", "random_kd")
        },
    }
    rows = []
    for arm, label in labels.items():
        folder = f"{FINETUNE_DIR.name}/{arm}"

        def stage(key: str, f: str = folder) -> float:
            values = ctx.stage_metric(f, key)
            return ctx.interval(values).mean if values else float("nan")

        if arm == "full":  # the no-KD arm runs no teacher: nothing to count or time
            teacher = dict.fromkeys(TEACHER_COLUMNS, "-")
        else:
            teacher = {
                "teacher GMACs / image": f"{stage('teacher_gmacs_per_image'):.4f}",
                "teacher GMACs vs full": f"{stage('teacher_gmacs_ratio'):.2f}x",
                "teacher img/s vs full": SeedRatios(
                    ctx.stage_metric(folder, "teacher_throughput_ratio"), ctx.stage_metric(folder, "teacher_aa_ratio")
                ).text(),
            }
        rows.append(
            {
                "teacher sees": label,
                "student top-1": points(ctx.interval(ctx.model_metric(folder, "top1"))),
                "teacher top-1 on what it sees": points(ctx.interval(alone[arm])) if alone.get(arm) else "-",
                **teacher,
                "training TFLOPs": f"{stage('train_tflops'):.2f}",
            }
        )
    sec.text(
        "Student test top-1 (mean [95% interval] over seeds, points), the teacher's own test top-1 on the "
        "patches it sees in that arm (MaskedKD's: those its trained student attends to), and the training "
        "cost; the teacher's GMACs are counted as it runs, its throughput measured against the full-image "
        f"teacher in one process beside an A/A control ({SEED_RATIOS_RULE})."
    )
    sec.table(pd.DataFrame(rows))
    top1 = {arm: ctx.model_metric(f"{FINETUNE_DIR.name}/{arm}", "top1") for arm in MASKEDKD_ARMS}
    sec.text(
        f"Control: MaskedKD minus the random-mask arm at the same keep: "
        f"{signed_points(ctx.paired(top1['random_kd'], top1['masked_kd']))} points."
    )
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
    sec.claim = Claim(
        f"teacher on {keep:.0%} of the patches (MaskedKD) against the full image, and KD against none",
        [
            Test("MaskedKD - full-image KD", differences(top1["full_kd"], top1["masked_kd"]), -rule.margin),
            Test("full-image KD - no KD", differences(top1["full"], top1["full_kd"]), rule.kd_gain),
        ],
        [
            teacher_gap(ctx.model_metric(TEACHER_DIR.name, "top1"), top1["full"], ctx.checks.teacher_gap),
            teacher_gap(alone["masked_kd"], top1["full"], ctx.checks.teacher_gap, "on MaskedKD's patches"),
            plateaued(
                ctx.val_curves({arm: f"{FINETUNE_DIR.name}/{arm}" for arm in MASKEDKD_ARMS}), ctx.checks.plateau_slope
            ),
            ctx.above_chance([TEACHER_DIR.name, *(f"{FINETUNE_DIR.name}/{arm}" for arm in MASKEDKD_ARMS)]),
        ],
    )
    return sec


def section_task_agnostic(ctx: Context) -> Section:
    """C: label-free KD into ViT and EViT students against each other and against scratch students."""
    sec = Section("C", "Task-agnostic KD into ViT and EViT students (Lu & Nakamura)")
    cfg, rule = ctx.params.distill, ctx.rules.task_agnostic
    rows = []
    for variant in distill_variants(cfg):
        name = f"{variant.folder.relative_to(MODELS_DIR).as_posix()}/finetune"
        first = ctx.results[0].model(name) or {}
        rows.append(
            {
                "student": variant.student if variant.student == "vit" else f"evit (keep {cfg.keep_rate:g})",
                "target": variant.target if variant.target != "scratch" else "none (scratch)",
                "params (M)": f"{first.get('params_m', float('nan')):.2f}",
                "GMACs": f"{first.get('gmacs', float('nan')):.4f}",
                "img/s vs unpruned": SeedRatios(
                    ctx.model_metric(name, "throughput_ratio"), ctx.model_metric(name, "aa_ratio")
                ).text(),
                "fine-tune top-1": points(ctx.interval(ctx.model_metric(name, "top1"))),
                "linear-probe top-1": points(
                    ctx.interval(ctx.model_metric(f"{name[: -len('/finetune')]}/probe", "top1"))
                ),
            }
        )
    teacher = model_name(cfg.teacher)
    sec.text(
        f"Students distilled from `{cfg.teacher}` without labels, then fine-tuned with labels or probed "
        "linearly on frozen features; scratch students get the same fine-tuning without distillation. "
        f"Test top-1, mean [95% interval] over seeds, points; img/s, {SEED_RATIOS_RULE}."
    )
    sec.table(pd.DataFrame(rows))
    if not {"vit", "evit"} <= set(cfg.students) or "scratch" not in cfg.targets:
        sec.verdict = f"{NOT_MEASURED}: distill.students must include vit and evit, distill.targets scratch"
        return sec

    def tuned(student: str, target: str) -> str:
        return f"{DistillVariant(student, target).folder.relative_to(MODELS_DIR).as_posix()}/finetune"

    top1 = {
        (student, target): ctx.model_metric(tuned(student, target), "top1")
        for student in ("vit", "evit")
        for target in (rule.target, "scratch")
    }
    student_params = ctx.model_metric(tuned("vit", rule.target), "params_m")
    teacher_params = ctx.model_metric(teacher, "params_m") if teacher else {}
    arms = {f"{student}-{target}": tuned(student, target) for student, target in top1}
    sec.claim = Claim(
        f"EViT (keep {cfg.keep_rate:g}) against ViT students distilled from `{cfg.teacher}` ({rule.target} target), "
        "and each against its scratch twin",
        [
            Test(
                "EViT - ViT student",
                differences(top1[("vit", rule.target)], top1[("evit", rule.target)]),
                -rule.margin,
            ),
            Test("ViT distilled - scratch", differences(top1[("vit", "scratch")], top1[("vit", rule.target)]), 0.0),
            Test("EViT distilled - scratch", differences(top1[("evit", "scratch")], top1[("evit", rule.target)]), 0.0),
        ],
        [
            teacher_gap(
                ctx.model_metric(teacher, "top1") if teacher else {},
                top1[("vit", "scratch")],
                ctx.checks.teacher_gap,
                view="in a linear probe",
                student_name="the scratch ViT student",
            ),
            teacher_larger(teacher_params, student_params),
            plateaued(
                ctx.val_curves({arm: folder.removesuffix("/finetune") for arm, folder in arms.items()}, "finetune"),
                ctx.checks.plateau_slope,
            ),
            ctx.above_chance(list(arms.values())),
        ],
    )
    return sec


def _mto_h(ctx: Context, objective: str) -> dict[int, list[float]]:
    """{seed: MTO's last-epoch H per layer} of one MIM objective."""
    return {
        result.seed: row["mto_h"]
        for result in ctx.results
        for row in result.evaluate["mto"]
        if row["objective"] == objective
    }


def section_mto(ctx: Context) -> Section:
    """D: MTO against the baseline per MIM objective: final probe, RAUC, convergence, heterogeneity, floor."""
    sec = Section("D", "MTO: masked-token optimisation in MIM pre-training (Choi et al., ECCV 2024)")
    rows, tests, falls, baselines, rauc, below, collapse = [], [], {}, {}, {}, [], {}
    floors = {
        name: ctx.values(lambda one, k=key: one.evaluate.get(k))
        for name, key in (("raw-pixel floor", "pixel_floor"), ("random-init encoder floor", "random_encoder_floor"))
    }
    for objective in ctx.params.pretrain.objectives:

        def column(key: str, o: str = objective) -> dict[int, float]:
            return ctx.values(
                lambda one: next((row.get(key) for row in one.evaluate["mto"] if row["objective"] == o), None)
            )

        base, mto = column("baseline_final_top1"), column("mto_final_top1")
        baselines[f"{objective} baseline"] = base
        # NOTE: MTO's encoder under a floor is a result against the claim, not a missing premise
        mto_floor = clears_floor({f"{objective} MTO": mto}, floors, ctx.checks.floor_gap)
        below += [] if mto_floor.passed else [mto_floor.detail]
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
            **{name: points(ctx.interval(values)) if values else NOT_MEASURED for name, values in floors.items()},
        }
        for key in rauc_keys:
            row[key.replace("rauc_", "RAUC epochs ").replace("_", "-")] = (
                ctx.interval(column(key)).text(digits=3) if column(key) else "undefined"
            )
        row["epochs for MTO to reach the baseline's final"] = ", ".join(
            "never" if e is None else f"{e:.1f}" for e in reached
        )
        rows.append(row)
        # NOTE: the first range of evaluate.rauc_epochs is the primary one (the cpu profile: the whole run)
        primary = column(rauc_keys[0]) if rauc_keys else {}
        tests.append(Test(f"{objective} RAUC", primary, ctx.rules.mto.min_rauc))
        rauc[objective] = {seed: primary.get(seed, math.nan) for seed in base}
        mto_arm, base_arm = (f"{PRETRAIN_DIR.name}/{objective}-{loss}" for loss in ("mto", "baseline"))
        visible = ctx.stage_metric(mto_arm, "visible_patches")
        loss, base_loss = ctx.stage_metric(mto_arm, "rec_loss"), ctx.stage_metric(base_arm, "rec_loss")
        collapse[f"{objective} MTO"] = {
            seed: Collapse(
                h[-1],
                math.log(visible.get(seed, math.nan)),
                loss.get(seed, math.nan),
                base_loss.get(seed, math.nan),
            )
            for seed, h in _mto_h(ctx, objective).items()
        }
        falls[f"{objective} MTO"] = _mto_h(ctx, objective)
        curves = {}
        for loss in PRETRAIN_LOSSES:
            curve = mean_curve(ctx, PLOTS_DIR / "pretrain.csv", f"{objective}-{loss}", "epoch", "probe_top1")
            if curve:
                curves[f"{objective} {loss}"] = curve
        if curves:
            epochs = next(iter(curves.values()))[0]
            for name, values in floors.items():
                if values:
                    level = [ctx.interval(values).mean] * len(epochs)
                    curves[name] = (epochs, level, [None] * len(epochs), [None] * len(epochs))
        if curves:
            sec.figure(
                figures.curves(
                    ctx.figures / f"d-{objective}-probe.png",
                    curves,
                    "pre-training epoch",
                    "linear-probe test top-1",
                    f"{objective}: convergence with and without MTO",
                ),
                f"Per-epoch linear-probe accuracy of the {objective} encoder (bands: 95% intervals), and the "
                "same probe on raw pixels and on a randomly initialised encoder (the floors a representation must "
                "clear).",
            )
        layers = {
            loss: pd.concat([frame for _, frame in per_seed]).groupby("layer")["h"].mean()
            for loss in PRETRAIN_LOSSES
            if (per_seed := model_rows(ctx, PLOTS_DIR / "heterogeneity.csv", f"{objective}-{loss}"))
        }
        if len(layers) == len(PRETRAIN_LOSSES):
            mean = pd.DataFrame({f"{loss}_h": h for loss, h in layers.items()})
            sec.figure(
                figures.grouped_bars(
                    ctx.figures / f"d-{objective}-heterogeneity.png",
                    [str(i) for i in mean.index],
                    {"baseline": list(mean["baseline_h"]), "MTO": list(mean["mto_h"])},
                    "H (nats)",
                    f"{objective}: heterogeneity per mask-carrying layer",
                ),
                "Last-epoch H per layer (0 = the input embedding), mean over seeds: MTO should make it fall with "
                "depth.",
            )
    sec.text(
        "Final linear-probe test top-1 (points) beside the same probe on raw pixels and on the student's "
        "encoder at its random initialisation, RAUC(baseline, MTO) per epoch range (0 = equal curves, > 0: MTO "
        "ahead), and per seed the epoch at which MTO reaches the baseline's final accuracy."
    )
    sec.table(pd.DataFrame(rows))
    if below:
        sec.text(
            "MTO's encoder does not clear the floors the baseline must clear (a result against the claim, not a "
            f"missing premise): {'; '.join(below)}."
        )
    ablation = newest(ctx.root / SWEEPS_DIR, "mto")
    if ablation is not None:
        sec.text(f"Loss ablation (`python -m flows.mto_ablation`, one seed, {ablation.name}):")
        sec.table(pd.read_csv(ablation).round(4))
    else:
        sec.text("The loss ablation has not been run here: `python -m flows.mto_ablation`.")
    sec.claim = Claim(
        "MTO against the baseline, by RAUC of the per-epoch probe curves",
        tests,
        [
            rauc_defined(rauc),
            heterogeneity_falls(falls),
            not_collapsed(collapse, ctx.checks.collapse_fraction),
            clears_floor(baselines, floors, ctx.checks.floor_gap),
            ctx.above_chance([f"{PRETRAIN_DIR.name}/{v.name}" for v in pretrain_variants(ctx.params.pretrain)]),
        ],
        points=False,
    )
    return sec
