"""DVC stage `evaluate`: every model of the pipeline measured -> metrics/evaluate.json, plots/evaluate/.

Accuracy, occlusion, params, GMACs and throughput of the models params.yaml defines (teacher,
pre-trained encoders with their linear probes, finetune variants, the prune and distill matrices),
plus ToMe applied to each finetune variant the prune matrix starts from, at the per-block merge
schedule whose GMACs come closest to each pruned model's (a training-free baseline at a matched
budget); the raw-pixel floor of the pre-training probe; throughput beside an A/A control. The
pruning table lines up init=full against init=masked at every method and keep rate; the MTO
table compares each objective's pre-training with and without MTO by their per-epoch probe curves.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from maskprune import atomic
from maskprune.checkpoint import load_model
from maskprune.cli import run_stage
from maskprune.config import (
    PRETRAIN_LOSSES,
    PRUNING_METHODS,
    DistillSection,
    EvaluateSection,
    MaskedKDVariant,
    ModelSpec,
    Params,
    PruneSection,
)
from maskprune.data.loader import Normalizer, PreparedData, Split, load_prepared
from maskprune.data.splits import stratified_indices
from maskprune.errors import MaskpruneError
from maskprune.layout import (
    EVALUATE_FILE,
    FINETUNE_DIR,
    MODELS_DIR,
    PLOTS_DIR,
    PRUNE_DIR,
    TEACHER_DIR,
    DistillVariant,
    PruneVariant,
    model_name,
    pipeline_models,
    prepared_dir,
)
from maskprune.measure import count_params, gmacs, occlusion_curve, paired_throughput, top1
from maskprune.models.tome import apply_tome, tome_schedule_for
from maskprune.models.vit import FLAT_POOL, TokenViT, build_model
from maskprune.mto_curves import mto_row, pretrain_history
from maskprune.objectives.masked_kd import TeacherView
from maskprune.probe import pixel_floor
from maskprune.runtime import Runtime, seed_everything
from maskprune.tracking.runs import StageRecord, flatten


def speed_and_cost(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    shape: tuple[int, ...],
    cfg: EvaluateSection,
    runtime: Runtime,
) -> dict[str, float]:
    """GMACs and throughput of `model`, each also as a ratio to `reference` timed alongside it."""
    one = torch.randn(1, *shape, device=runtime.device)
    batch = torch.randn(cfg.throughput_batch, *shape, device=runtime.device)
    macs, ref_macs = gmacs(model, one), gmacs(reference, one)
    model.eval()
    reference.eval()
    speed = paired_throughput(
        lambda: model(batch),
        lambda: reference(batch),
        len(batch),
        runtime,
        cfg.throughput_warmup,
        cfg.throughput_repeats,
    )
    return {
        "gmacs": macs,
        "gmacs_ratio": macs / ref_macs,
        "img_per_s": speed.img_per_s,
        "throughput_ratio": speed.ratio,
        "reference_img_per_s": speed.reference_img_per_s,
        "aa_ratio": speed.aa_ratio,
    }


def pruning_table(results: dict[str, dict[str, Any]], cfg: PruneSection) -> list[dict[str, Any]]:
    """One row per method x keep rate: test top-1 for each init, and masked minus full."""
    rows = []
    for method in PRUNING_METHODS:
        for keep in cfg.keep_rates:
            row: dict[str, Any] = {"method": method, "keep_rate": keep}
            for init in cfg.inits:
                entry = results[model_name(PruneVariant(method, init, keep).folder)]
                row[f"{init}_top1"] = entry["top1"]
                row[f"{init}_gmacs"] = entry["gmacs"]
                row[f"{init}_throughput_ratio"] = entry["throughput_ratio"]
            if {"full", "masked"} <= set(cfg.inits):
                row["masked_minus_full"] = row["masked_top1"] - row["full_top1"]
            rows.append(row)
    return rows


def mto_table(root: Path, params: Params) -> list[dict[str, Any]]:
    return [
        mto_row(
            o,
            pretrain_history(root, o, "baseline"),
            pretrain_history(root, o, "mto"),
            params.evaluate.rauc_epochs,
        )
        for o in params.pretrain.objectives
    ]


@torch.inference_mode()
def kept_patches(model: TokenViT, images: torch.Tensor, normalize: Normalizer) -> dict[str, list[list[int]]]:
    """For each pruning block, the input patches each image's tokens come from after it (-1: a fused token)."""
    model.eval()
    out = model.forward_tokens(normalize(images))
    return {str(block): idx.tolist() for block, idx in sorted(out.kept_patches.items())}


@torch.inference_mode()
def teacher_patches(cfg: MaskedKDVariant, root: Path, images: torch.Tensor, runtime: Runtime) -> dict[str, Any]:
    """The patches the MaskedKD teacher sees for `images`, chosen as finetune@masked_kd chooses them."""
    student, meta = load_model(root / FINETUNE_DIR / "masked_kd", runtime.device)
    teacher, _ = load_model(root / TEACHER_DIR, runtime.device)
    spec = ModelSpec.model_validate(meta["model"])
    x = Normalizer(meta["mean"], meta["std"], spec.img_size, runtime.device)(images)
    _, attn = student.eval()(x, return_cls_attn=True)
    chosen = TeacherView(teacher, cfg.teacher_keep, cfg.criterion).select(x, None, attn)
    patches = torch.arange(student.num_patches, device=x.device).expand(len(x), -1) if chosen is None else chosen
    return {"keep": cfg.teacher_keep, "criterion": cfg.criterion, "patches": patches.tolist()}


def task_agnostic_table(results: dict[str, dict[str, Any]], cfg: DistillSection) -> list[dict[str, Any]]:
    """One row per distilled student x target: fine-tune and linear-probe test top-1, cost."""
    rows = []
    for student in cfg.students:
        for target in cfg.targets:
            folder = DistillVariant(student, target).folder
            tuned, probe = results[model_name(folder / "finetune")], results[model_name(folder / "probe")]
            rows.append(
                {
                    "student": student,
                    "target": target,
                    "finetune_top1": tuned["top1"],
                    "probe_top1": probe["top1"],
                    "params_m": tuned["params_m"],
                    "gmacs": tuned["gmacs"],
                    "throughput_ratio": tuned["throughput_ratio"],
                }
            )
    return rows


class ModelMeter:
    """Measures one model after another on the same test split and occlusion draws."""

    def __init__(self, params: Params, test: Split, runtime: Runtime) -> None:
        self.params, self.test, self.runtime = params, test, runtime
        self.occluded = test.subset(params.evaluate.occlusion_limit, params.seed)
        self.occlusion_rows: list[dict[str, Any]] = []

    def measure(self, name: str, model: TokenViT, meta: dict[str, Any]) -> dict[str, Any]:
        cfg, runtime = self.params.evaluate, self.runtime
        spec = ModelSpec.model_validate(meta["model"])
        normalize = Normalizer(meta["mean"], meta["std"], spec.img_size, runtime.device)
        reference = build_model(spec, meta["num_classes"], meta["in_chans"]).to(runtime.device)
        # NOTE: a flat-pooled probe head needs every patch, so occlusion does not apply to it
        curve = (
            []
            if model.global_pool == FLAT_POOL
            else occlusion_curve(
                model,
                self.occluded,
                normalize,
                runtime,
                cfg.batch_size,
                cfg.occlusion_drop,
                model.num_patches,
                self.params.seed,
            )
        )
        self.occlusion_rows += [{"model": name, **row} for row in curve]
        return {
            "top1": top1(model, self.test, normalize, runtime, cfg.batch_size),
            "params_m": count_params(model) / 1e6,
            **speed_and_cost(model, reference, (meta["in_chans"], spec.img_size, spec.img_size), cfg, runtime),
            "occlusion_auc": _area(curve) if curve else None,
        }


def tome_baselines(
    init: str,
    root: Path,
    cfg: PruneSection,
    results: dict[str, Any],
    meter: ModelMeter,
    log=print,  # noqa: ANN001
) -> dict[str, Any]:
    """ToMe on models/finetune/<init>, once per pruned model from that init, at the schedule matching its GMACs.

    The sham arms (keep 1.0) drop nothing, so they get no ToMe twin.
    """
    model, meta = load_model(root / FINETUNE_DIR / init, meter.runtime.device)
    spec = ModelSpec.model_validate(meta["model"])
    example = torch.randn(1, meta["in_chans"], spec.img_size, spec.img_size, device=meter.runtime.device)
    found = {}
    for variant in (PruneVariant(m, init, k) for m in PRUNING_METHODS for k in cfg.keep_rates if k < 1.0):
        target = results[model_name(variant.folder)]["gmacs"]
        schedule = tome_schedule_for(model, target, example)
        name = f"tome/{init}-{variant.name}"
        entry = meter.measure(name, apply_tome(copy.deepcopy(model), schedule), meta)
        found[name] = {
            **entry,
            "tome_schedule": schedule,
            "init": init,
            "matched_to": variant.name,
            "gmacs_gap": entry["gmacs"] / target - 1,
        }
        log(
            f"evaluate: {name} top1 {entry['top1']:.4f} {entry['gmacs']:.4f} GMACs, schedule {schedule} "
            f"({found[name]['gmacs_gap']:+.1%} against {variant.name})"
        )
    return found


def write_outputs(root: Path, report: dict[str, Any], occlusion_rows: list[dict[str, Any]]) -> None:
    """metrics/evaluate.json, one occlusion CSV per model, the cost CSV, one pruning CSV per method."""
    atomic.write_json(root / EVALUATE_FILE, report)
    plots = root / PLOTS_DIR
    for name, rows in pd.DataFrame(occlusion_rows).groupby("model", sort=False):
        atomic.write_text(
            plots / "occlusion" / f"{name.replace('/', '-')}.csv",
            rows.drop(columns="model").to_csv(index=False),
        )
    cost = [
        {"model": name, **{k: entry[k] for k in ("top1", "gmacs", "img_per_s", "throughput_ratio")}}
        for name, entry in report["models"].items()
    ]
    atomic.write_text(plots / "cost.csv", pd.DataFrame(cost).to_csv(index=False))
    atomic.write_text(plots / "task_agnostic.csv", pd.DataFrame(report["task_agnostic"]).to_csv(index=False))
    for method, rows in pd.DataFrame(report["pruning"]).groupby("method", sort=False):
        atomic.write_text(plots / "pruning" / f"{method}.csv", rows.drop(columns="method").to_csv(index=False))
    for row in report["mto"]:
        objective = row["objective"]
        baseline, mto = (pretrain_history(root, objective, loss) for loss in PRETRAIN_LOSSES)
        curves = pd.DataFrame(
            {
                "epoch": baseline["epoch"],
                "baseline_probe_top1": baseline["probe_top1"],
                "mto_probe_top1": mto["probe_top1"],
            }
        )
        atomic.write_text(plots / "pretrain" / f"{objective}.csv", curves.to_csv(index=False))
        layers = pd.DataFrame(
            {"layer": range(len(row["baseline_h"])), "baseline_h": row["baseline_h"], "mto_h": row["mto_h"]}
        )
        atomic.write_text(plots / "heterogeneity" / f"{objective}.csv", layers.to_csv(index=False))


def _area(curve: list[dict[str, float]]) -> float:
    """Trapezoid area under top-1 vs removed fraction, divided by the fraction range covered."""
    xs = [row["drop_fraction"] for row in curve]
    ys = [row["top1"] for row in curve]
    if len(xs) < 2:
        return ys[0]
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])


def probe_floor(params: Params, data: PreparedData, runtime: Runtime) -> float:
    """The pre-training probe fitted on raw pixels, with its training and test images: claim D's floor."""
    cfg = params.pretrain.probe
    normalize = Normalizer(data.meta["mean"], data.meta["std"], params.models.student.img_size, runtime.device)
    train = data.splits["train"].subset(cfg.train_limit, params.seed).to(runtime.device)
    test = data.splits["test"].subset(cfg.test_limit, params.seed).to(runtime.device)
    return pixel_floor(train, test, normalize, cfg, params.seed, data.num_classes)


def compute(params: Params, root: Path, runtime: Runtime) -> None:
    """Measure every model; write metrics/evaluate.json and the plot CSVs under plots/evaluate/."""
    log = print if runtime.is_main else lambda _: None
    seed_everything(params.seed)
    data = load_prepared(root / prepared_dir(params.data.name), splits=("train", "test"))
    meter = ModelMeter(params, data.splits["test"].to(runtime.device), runtime)
    # NOTE: a seeded class-stratified sample, the same for every seed (data.seed), so a class-sorted
    # test split still shows several classes
    pictures = stratified_indices(data.splits["test"].labels.numpy(), params.evaluate.token_images, params.data.seed)
    picture_images = meter.test.images[pictures]
    tokens: dict[str, Any] = {"images": pictures, "models": {}}
    results: dict[str, Any] = {}
    for name in pipeline_models(params):
        folder = root / MODELS_DIR / name
        if not (folder / "meta.json").is_file():
            raise MaskpruneError(
                f"{folder} is missing: run `dvc repro` (evaluate measures every model of the pipeline)"
            )
        model, meta = load_model(folder, runtime.device)
        if meta["data"] != data.meta["name"] or meta["num_classes"] != data.num_classes:
            raise MaskpruneError(
                f"{folder} was trained on {meta['data']!r}, not on the prepared "
                f"{data.meta['name']!r}; rerun its stage or fix data.name"
            )
        results[name] = meter.measure(name, model, meta)
        if meta.get("pruning") and name.startswith(f"{PRUNE_DIR.name}/") and meta["keep_rate"] < 1.0:  # not the sham
            spec = ModelSpec.model_validate(meta["model"])
            normalize = Normalizer(meta["mean"], meta["std"], spec.img_size, runtime.device)
            tokens["models"][name] = kept_patches(model, picture_images, normalize)
        log(f"evaluate: {name} top1 {results[name]['top1']:.4f} {results[name]['gmacs']:.4f} GMACs")
        del model
    for init in params.prune.inits:
        results.update(tome_baselines(init, root, params.prune, results, meter, log))
    report = {
        "models": results,
        "pixel_floor": probe_floor(params, data, runtime),
        "pruning": pruning_table(results, params.prune),
        "task_agnostic": task_agnostic_table(results, params.distill),
        "mto": mto_table(root, params),
        "tokens": {
            **tokens,
            "grid": params.models.student.img_size // params.models.student.patch_size,
            "maskedkd_teacher": teacher_patches(params.finetune.masked_kd, root, picture_images, runtime),
        },
        "setup": {
            "device": str(runtime.device),
            "threads": torch.get_num_threads(),
            "throughput_batch": params.evaluate.throughput_batch,
            "test_images": len(meter.test),
            "occlusion_images": len(meter.occluded),
        },
    }
    if runtime.is_main:
        write_outputs(root, report, meter.occlusion_rows)
        table = pd.DataFrame(report["pruning"]).set_index(["method", "keep_rate"])
        print(f"evaluate: pruned test top-1 by init\n{table.to_string(float_format='{:.4f}'.format)}")
        table = pd.DataFrame(report["task_agnostic"]).set_index(["student", "target"])
        print(f"evaluate: task-agnostic KD students\n{table.to_string(float_format='{:.4f}'.format)}")
        table = pd.DataFrame(report["mto"]).drop(columns=["baseline_h", "mto_h"]).set_index("objective")
        print(f"evaluate: pre-training with vs without MTO\n{table.T.to_string(float_format='{:.4f}'.format)}")


def table_metrics(prefix: str, rows: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    """'<prefix>.<key values...>.<column>' for every number of a table (None and lists skipped)."""
    return {
        ".".join([prefix, *(str(row[k]) for k in keys), column]): value
        for row in rows
        for column, value in row.items()
        if column not in keys and isinstance(value, (int, float))
    }


def record(params: Params, root: Path) -> StageRecord:
    report = json.loads((root / EVALUATE_FILE).read_text())
    metrics = {k: v for k, v in flatten(report["models"]).items() if isinstance(v, (int, float))}
    pruning = [{**row, "keep_rate": f"keep{row['keep_rate']:g}"} for row in report["pruning"]]
    metrics.update(table_metrics("pruning", pruning, ("method", "keep_rate")))
    metrics.update(table_metrics("task_agnostic", report["task_agnostic"], ("student", "target")))
    metrics.update(table_metrics("mto", report["mto"], ("objective",)))
    return StageRecord(
        stage="evaluate",
        params={"seed": params.seed, "evaluate": params.evaluate.model_dump()},
        metrics=metrics,
        artifacts=[root / EVALUATE_FILE, root / PLOTS_DIR],
    )


if __name__ == "__main__":
    run_stage("evaluate", compute, record)
