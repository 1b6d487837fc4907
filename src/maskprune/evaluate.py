"""Evaluate every model of the pipeline: accuracy, occlusion, params, GMACs, throughput.

The models are the ones params.yaml defines (teacher, pre-trained encoders with their linear
probes, finetune variants, the prune and distill matrices), plus
ToMe applied to each finetune variant the prune matrix starts from, at the merge rate r whose
GMACs come closest to each pruned model's (a training-free baseline at a matched budget). The
pruning table lines up init=full against init=masked at every method and keep rate; the MTO
table compares each objective's pre-training with and without MTO by their per-epoch probe curves.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from maskprune import atomic
from maskprune.checkpoint import load_model
from maskprune.config import FINETUNE_VARIANTS, PRETRAIN_LOSSES, ModelSpec, Params
from maskprune.data.loader import Normalizer, Split, load_prepared
from maskprune.data.prepare import subset_indices
from maskprune.distill import TeacherView
from maskprune.errors import MaskpruneError
from maskprune.measure import count_params, gmacs, occlusion_curve, paired_throughput, top1
from maskprune.models.pruned import METHODS
from maskprune.models.tome import apply_tome, max_tome_r
from maskprune.models.vit import TokenViT, build_model
from maskprune.pretrain import PretrainVariant
from maskprune.prune import PruneVariant
from maskprune.rauc import epochs_to_reach, rauc
from maskprune.runtime import Runtime, seed_everything
from maskprune.task_agnostic import DistillVariant


def pipeline_models(params: Params) -> list[str]:
    """Folders under models/ that the pipeline in params.yaml produces, in pipeline order."""
    prune = [PruneVariant(m, i, k).name for m in METHODS for i in params.prune.inits for k in params.prune.keep_rates]
    distill = [DistillVariant(s, t).name for s in params.distill.students for t in params.distill.targets]
    pretrain = [PretrainVariant(o, loss).name for o in params.pretrain.objectives for loss in PRETRAIN_LOSSES]
    return [
        "teacher",
        *(f"pretrain/{name}" for name in pretrain),
        *(f"finetune/{v}" for v in FINETUNE_VARIANTS),
        *(f"prune/{name}" for name in prune),
        *(f"distill/{name}/{how}" for name in distill for how in ("finetune", "probe")),
    ]


def speed_and_cost(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    shape: tuple[int, ...],
    params: Params,
    runtime: Runtime,
) -> dict[str, float]:
    """GMACs and throughput of `model`, each also as a ratio to `reference` timed alongside it."""
    cfg = params.evaluate
    one = torch.randn(1, *shape, device=runtime.device)
    batch = torch.randn(cfg.throughput_batch, *shape, device=runtime.device)
    macs, ref_macs = gmacs(model, one), gmacs(reference, one)
    model.eval()
    reference.eval()
    img_s, ref_img_s = paired_throughput(
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
        "img_per_s": img_s,
        "throughput_ratio": img_s / ref_img_s,
        "reference_img_per_s": ref_img_s,
    }


def tome_matches(base: TokenViT, targets: dict[str, float], example: torch.Tensor) -> dict[int, list[str]]:
    """ToMe merge rate r -> the models (name -> GMACs) whose GMACs it matches most closely."""
    costs = {
        r: gmacs(apply_tome(copy.deepcopy(base), r), example)
        for r in range(1, max_tome_r(base.num_patches, len(base.blocks)) + 1)
    }
    matches: dict[int, list[str]] = {}
    for name, target in targets.items():
        r = min(costs, key=lambda k: abs(costs[k] - target))
        matches.setdefault(r, []).append(name)
    return dict(sorted(matches.items()))


def pruning_table(results: dict[str, dict[str, Any]], params: Params) -> list[dict[str, Any]]:
    """One row per method x keep rate: test top-1 for each init, and masked minus full."""
    rows = []
    for method in METHODS:
        for keep in params.prune.keep_rates:
            row: dict[str, Any] = {"method": method, "keep_rate": keep}
            for init in params.prune.inits:
                entry = results[f"prune/{PruneVariant(method, init, keep).name}"]
                row[f"{init}_top1"] = entry["top1"]
                row[f"{init}_gmacs"] = entry["gmacs"]
                row[f"{init}_throughput_ratio"] = entry["throughput_ratio"]
            if {"full", "masked"} <= set(params.prune.inits):
                row["masked_minus_full"] = row["masked_top1"] - row["full_top1"]
            rows.append(row)
    return rows


def pretrain_history(root: Path, objective: str, loss: str) -> pd.DataFrame:
    path = root / "models" / "pretrain" / PretrainVariant(objective, loss).name / "history.csv"
    if not path.is_file():
        raise MaskpruneError(f"{path} is missing: run `dvc repro pretrain@{objective}-{loss}`")
    return pd.read_csv(path)


def mto_row(objective: str, baseline: pd.DataFrame, mto: pd.DataFrame, ranges: list[list[int]]) -> dict[str, Any]:
    """Baseline vs MTO pre-training of one objective, from their per-epoch probe accuracy.

    RAUC for each [E1, E2] range (E2 = 0: the last epoch; None where the baseline gains nothing
    over the range), the epoch at which MTO reaches the baseline's final accuracy (None if it
    never does), and both runs' last-epoch heterogeneity per mask-carrying layer.
    """
    if list(baseline["epoch"]) != list(mto["epoch"]):
        raise MaskpruneError(
            f"pretrain@{objective}-baseline and -mto were trained for different epochs; "
            "rerun both with the same pretrain.train"
        )
    epochs = [float(e) for e in baseline["epoch"]]
    s1, s2 = list(baseline["probe_top1"]), list(mto["probe_top1"])
    row: dict[str, Any] = {
        "objective": objective,
        "epochs": len(epochs),
        "baseline_final_top1": s1[-1],
        "mto_final_top1": s2[-1],
        "mto_minus_baseline_final": s2[-1] - s1[-1],
    }
    for e1, e2 in ranges:
        end = e2 or int(epochs[-1])
        if end > epochs[-1]:
            raise MaskpruneError(
                f"evaluate.rauc_epochs [{e1}, {e2}] goes beyond the {len(epochs)} pre-training "
                "epochs; lower E2 or use 0 for the last epoch"
            )
        try:
            row[f"rauc_{e1}_{end}"] = rauc(epochs, s1, s2, e1, end)
        except ValueError:
            row[f"rauc_{e1}_{end}"] = None
    reached = epochs_to_reach(epochs, s2, s1[-1])
    row["mto_epochs_to_baseline_final"] = reached
    row["mto_epoch_fraction_to_baseline_final"] = None if reached is None else reached / epochs[-1]
    layers = sorted(int(c[2:]) for c in baseline.columns if c.startswith("h_"))
    row["baseline_h"] = [float(baseline[f"h_{i}"].iloc[-1]) for i in layers]
    row["mto_h"] = [float(mto[f"h_{i}"].iloc[-1]) for i in layers]
    return row


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
def teacher_patches(params: Params, root: Path, images: torch.Tensor, runtime: Runtime) -> dict[str, Any]:
    """The patches the MaskedKD teacher sees for `images`, chosen as finetune@masked_kd chooses them."""
    cfg = params.finetune.masked_kd
    student, meta = load_model(root / "models" / "finetune" / "masked_kd", runtime.device)
    teacher, _ = load_model(root / "models" / "teacher", runtime.device)
    spec = ModelSpec.model_validate(meta["model"])
    x = Normalizer(meta["mean"], meta["std"], spec.img_size, runtime.device)(images)
    _, attn = student.eval()(x, return_cls_attn=True)
    chosen = TeacherView(teacher, cfg.teacher_keep, cfg.criterion).select(x, None, attn)
    patches = torch.arange(student.num_patches, device=x.device).expand(len(x), -1) if chosen is None else chosen
    return {"keep": cfg.teacher_keep, "criterion": cfg.criterion, "patches": patches.tolist()}


def task_agnostic_table(results: dict[str, dict[str, Any]], params: Params) -> list[dict[str, Any]]:
    """One row per distilled student x target: fine-tune and linear-probe test top-1, cost."""
    rows = []
    for student in params.distill.students:
        for target in params.distill.targets:
            name = DistillVariant(student, target).name
            tuned, probe = results[f"distill/{name}/finetune"], results[f"distill/{name}/probe"]
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
        self.occluded = test
        if params.evaluate.occlusion_limit:
            keep = torch.from_numpy(subset_indices(len(test), params.evaluate.occlusion_limit, params.seed))
            self.occluded = Split(test.images[keep.to(test.images.device)], test.labels[keep.to(test.labels.device)])
        self.occlusion_rows: list[dict[str, Any]] = []

    def measure(self, name: str, model: TokenViT, meta: dict[str, Any]) -> dict[str, Any]:
        cfg, runtime = self.params.evaluate, self.runtime
        spec = ModelSpec.model_validate(meta["model"])
        normalize = Normalizer(meta["mean"], meta["std"], spec.img_size, runtime.device)
        reference = build_model(spec, meta["num_classes"], meta["in_chans"]).to(runtime.device)
        curve = occlusion_curve(
            model,
            self.occluded,
            normalize,
            runtime,
            cfg.batch_size,
            cfg.occlusion_drop,
            model.num_patches,
            self.params.seed,
        )
        self.occlusion_rows += [{"model": name, **row} for row in curve]
        return {
            "top1": top1(model, self.test, normalize, runtime, cfg.batch_size),
            "params_m": count_params(model) / 1e6,
            **speed_and_cost(model, reference, (meta["in_chans"], spec.img_size, spec.img_size), self.params, runtime),
            "occlusion_auc": _area(curve),
        }


def evaluate_models(params: Params, root: Path, runtime: Runtime, log=print) -> dict[str, Any]:  # noqa: ANN001
    """Measure every model; write metrics/evaluate.json and the plot CSVs under plots/evaluate/."""
    seed_everything(params.seed)
    data = load_prepared(root / "data" / "prepared" / params.data.name, splits=("test",))
    meter = ModelMeter(params, data.splits["test"].to(runtime.device), runtime)
    picture_images = meter.test.images[: params.evaluate.token_images]
    tokens: dict[str, Any] = {"images": list(range(len(picture_images))), "models": {}}
    results: dict[str, Any] = {}
    for name in pipeline_models(params):
        folder = root / "models" / name
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
        if meta.get("pruning") and name.startswith("prune/"):
            spec = ModelSpec.model_validate(meta["model"])
            normalize = Normalizer(meta["mean"], meta["std"], spec.img_size, runtime.device)
            tokens["models"][name] = kept_patches(model, picture_images, normalize)
        log(f"evaluate: {name} top1 {results[name]['top1']:.4f} {results[name]['gmacs']:.4f} GMACs")
        del model
    for init in params.prune.inits:
        results.update(tome_baselines(init, root, params, results, meter, log))
    report = {
        "models": results,
        "pruning": pruning_table(results, params),
        "task_agnostic": task_agnostic_table(results, params),
        "mto": mto_table(root, params),
        "tokens": {
            **tokens,
            "grid": params.models.student.img_size // params.models.student.patch_size,
            "maskedkd_teacher": teacher_patches(params, root, picture_images, runtime),
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
    return report


def tome_baselines(
    init: str,
    root: Path,
    params: Params,
    results: dict[str, Any],
    meter: ModelMeter,
    log=print,  # noqa: ANN001
) -> dict[str, Any]:
    """ToMe on models/finetune/<init> at the r matching each pruned model from that init."""
    model, meta = load_model(root / "models" / "finetune" / init, meter.runtime.device)
    pruned = [PruneVariant(m, init, k).name for m in METHODS for k in params.prune.keep_rates]
    targets = {name: results[f"prune/{name}"]["gmacs"] for name in pruned}
    spec = ModelSpec.model_validate(meta["model"])
    example = torch.randn(1, meta["in_chans"], spec.img_size, spec.img_size, device=meter.runtime.device)
    found = {}
    for r, matched in tome_matches(model, targets, example).items():
        name = f"tome/{init}-r{r}"
        found[name] = {
            **meter.measure(name, apply_tome(copy.deepcopy(model), r), meta),
            "tome_r": r,
            "init": init,
            "matched_to": matched,
        }
        log(
            f"evaluate: {name} top1 {found[name]['top1']:.4f} {found[name]['gmacs']:.4f} GMACs "
            f"(matched to {', '.join(matched)})"
        )
    return found


def write_outputs(root: Path, report: dict[str, Any], occlusion_rows: list[dict[str, Any]]) -> None:
    """metrics/evaluate.json, one occlusion CSV per model, the cost CSV, one pruning CSV per method."""
    atomic.write_json(root / "metrics" / "evaluate.json", report)
    plots = root / "plots" / "evaluate"
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
