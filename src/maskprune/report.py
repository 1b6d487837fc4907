"""The report: does masking make pruned ViTs better and cheaper on this data? One section per paper.

Sections (each ends in a one-line verdict computed from the numbers, see `maskprune.stats`):
  A. masked fine-tuning as the init of token pruning (Shi & Wang, arXiv 2310.17177)
  B. MaskedKD: a teacher that sees only the patches the student attends to (Son et al., ECCV 2024)
  C. task-agnostic KD into ViT and EViT students (Lu & Nakamura)
  D. MTO: masked-token optimisation in MAE / SimMIM pre-training (Choi et al., ECCV 2024)
  E. cost against accuracy for every model, ToMe included, with the Pareto front
  and token pictures: which patches each pruned model keeps, and which the MaskedKD teacher sees.
Every number aggregates the seeds in `maskprune.results` (mean and Student-t interval; paired
differences between the compared arms). Written as reports/report.md (figures as files) and
reports/report.html (self-contained: figures embedded, no network resource).
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskprune import atomic, figures
from maskprune.config import FINETUNE_VARIANTS, PRETRAIN_LOSSES, Params
from maskprune.data.loader import load_prepared
from maskprune.models.pruned import METHODS
from maskprune.results import SeedResult, load_results, per_seed
from maskprune.stats import (
    Interval,
    directional_verdict,
    non_inferiority_verdict,
    paired_difference,
    t_interval,
)

REPORT_DIR = Path("reports")
FIGURES = "figures"
SWEEPS_DIR = REPORT_DIR / "sweeps"
NOT_MEASURED = "not measured"


@dataclass
class Section:
    key: str
    title: str
    verdict: str = ""
    blocks: list[tuple[str, Any]] = field(
        default_factory=list
    )  # ("text", str) | ("table", df) | ("figure", (path, caption))

    def text(self, value: str) -> None:
        self.blocks.append(("text", value))

    def table(self, frame: pd.DataFrame) -> None:
        self.blocks.append(("table", frame))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("figure", (path, caption)))


@dataclass
class Report:
    title: str
    intro: list[str]
    sections: list[Section]
    seeds: list[int]
    excluded: list[dict[str, Any]]
    best_pruned: str  # the pruned model with the highest mean test top-1 over the seeds

    def summary(self) -> dict[str, Any]:
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
        return t_interval(values.values(), self.confidence)

    def paired(self, a: dict[int, float], b: dict[int, float]) -> Interval:
        return paired_difference(a, b, self.confidence)

    def values(self, fn: Callable[[SeedResult], float | None]) -> dict[int, float]:
        return per_seed(self.results, fn)

    def model_metric(self, model: str, key: str) -> dict[int, float]:
        return self.values(lambda r: (r.model(model) or {}).get(key))


def points(iv: Interval) -> str:
    return iv.text(scale=100, digits=2)


def signed_points(iv: Interval) -> str:
    return iv.text(scale=100, digits=2, signed=True)


def _curve(ctx: Context, relative: str, x: str, y: str) -> tuple[list[float], list[float], list, list] | None:
    """Mean and interval over seeds of `y` against `x` from each seed's CSV at `relative`."""
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
    found = sorted(folder.glob(f"{prefix}*.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def section_masked_finetuning(ctx: Context) -> Section:
    sec = Section("A", "Masked fine-tuning as the init of token pruning (Shi & Wang, arXiv 2310.17177)")
    inits = ctx.params.prune.inits
    if not {"full", "masked"} <= set(inits):
        sec.verdict = f"{NOT_MEASURED}: prune.inits must include full and masked (it is {inits})"
        return sec
    rows, per_setting = [], []
    for method in METHODS:
        for keep in ctx.params.prune.keep_rates:

            def top1(init: str, m: str = method, k: float = keep) -> dict[int, float]:
                return ctx.model_metric(f"prune/{m}-{init}-{k:g}", "top1")

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
    for method in METHODS:
        for init in ("full", "masked"):
            ivs = [
                ctx.interval(ctx.model_metric(f"prune/{method}-{init}-{k:g}", "top1"))
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
        curve = _curve(ctx, f"plots/evaluate/occlusion/finetune-{variant}.csv", "drop_fraction", "top1")
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


def section_maskedkd(ctx: Context) -> Section:
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
            curve = _curve(ctx, f"plots/evaluate/pretrain/{objective}.csv", "epoch", f"{loss}_probe_top1")
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
        frames = [f for r in ctx.results if (f := r.csv(f"plots/evaluate/heterogeneity/{objective}.csv")) is not None]
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


def pareto_front(points_: list[dict[str, Any]], x: str, y: str, lower_x_better: bool = True) -> list[str]:
    """Names of the points no other point beats on both axes (x: lower or higher better; y: higher better)."""

    def beats(q: dict[str, Any], p: dict[str, Any]) -> bool:
        better_x = q[x] <= p[x] if lower_x_better else q[x] >= p[x]
        strictly = q[x] != p[x] or q[y] != p[y]
        return better_x and q[y] >= p[y] and strictly

    return [p["name"] for p in points_ if not any(beats(q, p) for q in points_ if q is not p)]


def family(name: str) -> str:
    if name.startswith("prune/"):
        return name.split("/")[1].split("-")[0]
    if name.startswith("distill/"):
        return "distill " + name.split("/")[-1]
    return name.split("/")[0]


def section_cost(ctx: Context) -> Section:
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
    sec = Section("T", "Token pictures: which patches are kept")
    workspace = next(r for r in ctx.results if r.root == ctx.root)
    tokens = workspace.evaluate.get("tokens")
    if not tokens:
        sec.verdict = f"{NOT_MEASURED}: metrics/evaluate.json holds no token pictures"
        return sec
    data = load_prepared(ctx.root / "data" / "prepared" / ctx.params.data.name, splits=("test",))
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


def build_report(root: Path, params: Params, figures_dir: Path) -> Report:
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


def render_markdown(report: Report) -> str:
    """Markdown with the figures as files beside it, in figures/."""
    lines = [f"# {report.title}", "", *report.intro, "", "## Verdicts", ""]
    lines += [f"- **{s.key}. {s.title}**: {s.verdict}" for s in report.sections]
    for sec in report.sections:
        lines += ["", f"## {sec.key}. {sec.title}", ""]
        for kind, value in sec.blocks:
            if kind == "text":
                lines += [value, ""]
            elif kind == "table":
                lines += [value.to_markdown(index=False), ""]
            else:
                path, caption = value
                lines += [f"![{caption}]({FIGURES}/{path.name})", "", f"*{caption}*", ""]
        lines += [f"**Verdict:** {sec.verdict}"]
    return "\n".join(lines) + "\n"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}figcaption{font-size:.85em;
color:#555}.verdict{background:#eef6ee;border-left:4px solid #4a4;padding:.5em .8em}"""


def render_html(report: Report) -> str:
    """One self-contained page: figures embedded as data URIs, no external resource."""
    esc = html.escape
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(report.title)}</title>',
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{esc(report.title)}</h1>",
    ]
    parts += [f"<p>{esc(line)}</p>" for line in report.intro]
    parts.append('<h2 id="verdicts">Verdicts</h2><ul>')
    parts += [
        f'<li><a href="#{s.key}"><b>{esc(s.key)}. {esc(s.title)}</b></a>: {esc(s.verdict)}</li>'
        for s in report.sections
    ]
    parts.append("</ul>")
    for sec in report.sections:
        parts.append(f'<h2 id="{sec.key}">{esc(sec.key)}. {esc(sec.title)}</h2>')
        for kind, value in sec.blocks:
            if kind == "text":
                parts.append(f"<p>{esc(value)}</p>")
            elif kind == "table":
                parts.append(value.to_html(index=False, border=0, escape=True))
            else:
                path, caption = value
                data = base64.b64encode(Path(path).read_bytes()).decode()
                parts.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
                    f"<figcaption>{esc(caption)}</figcaption></figure>"
                )
        parts.append(f'<p class="verdict"><b>Verdict:</b> {esc(sec.verdict)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(root: Path, params: Params) -> Report:
    """Build the report and write reports/report.md, reports/report.html and reports/figures/*.png.

    The figures are drawn into a temporary folder that replaces reports/figures/ whole, so the
    report never refers to a figure of another run.
    """
    out = root / REPORT_DIR
    with atomic.atomic_dir(out / FIGURES) as drawn:
        report = build_report(root, params, drawn)
        markdown, page = render_markdown(report), render_html(report)
    atomic.write_text(out / "report.md", markdown)
    atomic.write_text(out / "report.html", page)
    atomic.write_json(out / "summary.json", report.summary())
    return report
