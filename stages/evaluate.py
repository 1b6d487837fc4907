"""DVC stage `evaluate`: every model of the pipeline measured -> metrics/evaluate.json, plots/evaluate/.

Accuracy, occlusion, params, GMACs and throughput of the models params.yaml defines (teacher,
pre-trained encoders with their linear probes, finetune variants, the prune and distill matrices),
plus ToMe applied to each finetune variant the prune matrix starts from, at the per-block merge
schedule whose GMACs come closest to each pruned model's (a training-free baseline at a matched
budget); the raw-pixel floor of the pre-training probe; throughput beside an A/A control. The
pruning table lines up init=full against init=masked at every method and keep rate; the MTO
table compares each objective's pre-training with and without MTO by their per-epoch probe curves.
It reads only the models params.yaml declares, and first removes the outputs of matrix items
params.yaml no longer declares (`undeclared_outputs`).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from maskprune import atomic
from maskprune.aa_control import aa_noisy
from maskprune.checkpoint import WEIGHTS_FILE, load_model
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
from maskprune.data.loader import Normalizer
from maskprune.data.sources import sha256_of
from maskprune.data.splits import stratified_indices
from maskprune.data.storage import PreparedData, Split, load_prepared
from maskprune.environment import cpu_name
from maskprune.errors import MaskpruneError
from maskprune.launch import checkpoint_root
from maskprune.layout import (
    DISTILL_DIR,
    EVALUATE_FILE,
    FINETUNE_DIR,
    HEADLINE_FILE,
    MODELS_DIR,
    PLOTS_DIR,
    PRETRAIN_DIR,
    PRUNE_DIR,
    TEACHER_DIR,
    DistillVariant,
    PruneVariant,
    model_name,
    pipeline_models,
    prepared_dir,
)
from maskprune.measure import count_params, gmacs, occlusion_curve, paired_throughput, top1
from maskprune.models.loading import normalizer_for
from maskprune.models.tome import apply_tome, tome_schedule_for
from maskprune.models.vit import FLAT_POOL, TokenViT, build_model, take_inputs_as
from maskprune.mto_curves import mto_row, pretrain_history
from maskprune.objectives.masked_kd import TeacherView, teacher_view
from maskprune.probe import LinearProbe, pixel_floor
from maskprune.runtime import Runtime, seed_everything
from maskprune.tracking.runs import StageRecord, flatten

# runtime.amp's word for each autocast dtype a Runtime resolves to (None: no autocast, fp32)


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
    teacher, teacher_meta = load_model(root / TEACHER_DIR, runtime.device)
    take_inputs_as(teacher, (teacher_meta["mean"], teacher_meta["std"]), (meta["mean"], meta["std"]))
    spec = ModelSpec.model_validate(meta["model"])
    x = Normalizer(meta["mean"], meta["std"], spec.img_size, runtime.device)(images)
    _, attn = student.eval()(x, return_cls_attn=True)
    chosen = TeacherView(teacher, cfg.teacher_keep, cfg.criterion).select(x, None, attn)
    patches = torch.arange(student.num_patches, device=x.device).expand(len(x), -1) if chosen is None else chosen
    return {"keep": cfg.teacher_keep, "criterion": cfg.criterion, "patches": patches.tolist()}


@torch.inference_mode()
def masked_teacher_top1(params: Params, root: Path, test: Split, runtime: Runtime) -> dict[str, float]:
    """Claim B's premise: the teacher's test top-1 on only the patches each masked arm's teacher sees.

    Per arm whose teacher sees part of the image (masked_kd: the patches its own trained student
    attends to, by its criterion; random_kd: as many at random, seeded), the teacher classifies each
    test image from those patches alone, as it did when it taught that arm.
    """
    teacher, teacher_meta = load_model(root / TEACHER_DIR, runtime.device)
    out = {}
    for arm in ("masked_kd", "random_kd"):
        student, meta = load_model(root / FINETUNE_DIR / arm, runtime.device)
        take_inputs_as(teacher, (teacher_meta["mean"], teacher_meta["std"]), (meta["mean"], meta["std"]))
        teacher_meta = {**teacher_meta, "mean": meta["mean"], "std": meta["std"]}
        view = teacher_view(params.finetune, arm, teacher)
        spec = ModelSpec.model_validate(meta["model"])
        normalize = Normalizer(meta["mean"], meta["std"], spec.img_size, runtime.device, meta.get("eval_crop_pct"))
        torch.manual_seed(params.seed)  # the random arm's draws
        correct = total = 0
        for _, images, labels in test.batches(params.evaluate.batch_size, runtime.device, crop_pct=normalize.crop_pct):
            x = normalize(images)
            attn = student.eval()(x, return_cls_attn=True)[1] if view.needs_student_attention else None
            with runtime.autocast(inference=True):
                logits = teacher(x, keep_idx=view.select(x, None, attn))
            correct += int((logits.argmax(dim=-1) == labels).sum())
            total += len(labels)
        out[arm] = correct / max(total, 1)
    return out


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
        normalize = Normalizer(meta["mean"], meta["std"], spec.img_size, runtime.device, meta.get("eval_crop_pct"))
        # NOTE: one reference for every model, the unpruned student (at this model's input size), so that
        # every throughput and GMACs ratio shares it: a teacher's is below 1, not 1 against itself
        student = self.params.models.student.model_copy(update={"img_size": spec.img_size})
        reference = build_model(student, meta["num_classes"], meta["in_chans"], weights=False).to(runtime.device)
        clean = top1(model, self.test, normalize, runtime, cfg.batch_size)
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
                # occlusion_limit 0 curves the whole test split: its unoccluded point is `clean`
                clean_top1=clean if self.occluded is self.test else None,
            )
        )
        self.occlusion_rows += [{"model": name, **row} for row in curve]
        return {
            "top1": clean,
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


def stage_folders(params: Params) -> list[str]:
    """The folders under models/ of the stages params.yaml declares ('prune/evit-full-0.5'), in pipeline
    order; a distill stage's two heads (distill/<variant>/finetune, .../probe) share its folder."""
    return list(dict.fromkeys("/".join(name.split("/")[:2]) for name in pipeline_models(params)))


def undeclared_outputs(root: Path, params: Params) -> list[Path]:
    """Model folders of matrix stages (pretrain, prune, distill) that params.yaml no longer declares,
    with their training checkpoints.

    DVC deletes nothing when an item leaves a stage's matrix: its persistent outputs stay, owned by
    no stage. Evaluate reruns whenever a matrix changes (it lists their params), so it removes them.
    A folder without a meta.json (not a stage's) is left alone.
    """
    declared = set(stage_folders(params))
    found = []
    for family in (PRETRAIN_DIR, PRUNE_DIR, DISTILL_DIR):
        for folder in sorted(p for p in (root / family).glob("*") if p.is_dir()):
            relative = folder.relative_to(root / MODELS_DIR)
            if relative.as_posix() not in declared and any(folder.rglob("meta.json")):
                found += [path for path in (folder, checkpoint_root(params.runtime, root) / relative) if path.exists()]
    return found


def training_curves(root: Path, params: Params) -> pd.DataFrame:
    """Validation top-1 per epoch of every trained model params.yaml declares: model, epoch, val_top1."""
    frames = []
    for name in stage_folders(params):
        path = root / MODELS_DIR / name / "history.csv"
        if path.is_file() and "val_top1" in (history := pd.read_csv(path)):
            curve = history.dropna(subset=["val_top1"])[["epoch", "val_top1"]]
            frames.append(curve.assign(model=name))
    return long_form(frames, ["model", "epoch", "val_top1"])


def long_form(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """`frames` stacked with `columns` in that order (an empty table with them if there are none)."""
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def plot_tables(
    root: Path, params: Params, report: dict[str, Any], occlusion_rows: list[dict[str, Any]]
) -> dict[str, pd.DataFrame]:
    """The plot CSVs under plots/evaluate/, one file per figure, in long form (one row per model and x).

    A `model` column names each line, so one plot definition in dvc.yaml covers any set of models.
    """
    pretrain, heterogeneity = [], []
    for row in report["mto"]:
        for loss in PRETRAIN_LOSSES:
            name = f"{row['objective']}-{loss}"
            history = pretrain_history(root, row["objective"], loss)
            pretrain.append(history[["epoch", "probe_top1"]].assign(model=name))
            layers = row[f"{loss}_h"]
            heterogeneity.append(pd.DataFrame({"model": name, "layer": range(len(layers)), "h": layers}))
    pruning = [
        {"model": f"{row['method']}-{init}", "keep_rate": row["keep_rate"], "top1": row[f"{init}_top1"]}
        for row in report["pruning"]
        for init in params.prune.inits
    ]
    cost = [
        {"model": name, **{k: entry[k] for k in ("top1", "gmacs", "img_per_s", "throughput_ratio")}}
        for name, entry in report["models"].items()
    ]
    return {
        "occlusion.csv": pd.DataFrame(occlusion_rows),
        "cost.csv": pd.DataFrame(cost),
        "task_agnostic.csv": pd.DataFrame(report["task_agnostic"]),
        "pruning.csv": pd.DataFrame(pruning),
        "pretrain.csv": long_form(pretrain, ["model", "epoch", "probe_top1"]),
        "heterogeneity.csv": long_form(heterogeneity, ["model", "layer", "h"]),
        "training.csv": training_curves(root, params),
    }


def headline(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per model: test top-1, GMACs and the throughput ratio to its unpruned reference (None where its
    A/A control says the timing is noise)."""
    return {
        name: {
            "top1": entry["top1"],
            "gmacs": entry["gmacs"],
            "throughput_ratio": None if aa_noisy(entry["aa_ratio"]) else entry["throughput_ratio"],
        }
        for name, entry in models.items()
    }


def write_outputs(root: Path, params: Params, report: dict[str, Any], occlusion_rows: list[dict[str, Any]]) -> None:
    """metrics/evaluate.json, metrics/headline.json and plots/evaluate/ (the folder replaced whole, so no
    file of an earlier run lingers)."""
    tables = plot_tables(root, params, report, occlusion_rows)
    atomic.write_json(root / EVALUATE_FILE, report)
    atomic.write_json(root / HEADLINE_FILE, headline(report["models"]))
    with atomic.atomic_dir(root / PLOTS_DIR) as plots:
        for file, table in tables.items():
            (plots / file).write_text(table.to_csv(index=False), encoding="utf-8")


def _area(curve: list[dict[str, float]]) -> float:
    """Trapezoid area under top-1 vs removed fraction, divided by the fraction range covered."""
    xs = [row["drop_fraction"] for row in curve]
    ys = [row["top1"] for row in curve]
    if len(xs) < 2:
        return ys[0]
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])


def probe_floors(params: Params, data: PreparedData, runtime: Runtime) -> dict[str, float]:
    """Claim D's two floors, with the pre-training probe's training and test images: the probe fitted on
    raw pixels (`pixel_floor`), and on the features of the student's encoder at its random initialisation
    (`random_encoder_floor`; seeded by the seed, as a pre-trained encoder starts). A representation that
    pre-training has taught something clears both."""
    cfg = params.pretrain.probe
    spec = params.models.student
    normalize = Normalizer(data.meta["mean"], data.meta["std"], spec.img_size, runtime.device)
    train = data.splits["train"].subset(cfg.train_limit, params.seed).to(runtime.device)
    test = data.splits["test"].subset(cfg.test_limit, params.seed).to(runtime.device)
    torch.manual_seed(params.seed)
    encoder = build_model(spec, num_classes=data.num_classes, in_chans=data.in_chans).to(runtime.device)
    encoder.reset_classifier(0)
    probe = LinearProbe(cfg, params.seed, normalizer_for(spec, data.meta, runtime.device), data, runtime)
    return {
        "pixel_floor": pixel_floor(train, test, normalize, cfg, params.seed, data.num_classes),
        "random_encoder_floor": probe.fit_and_score(encoder),
    }


def compute(params: Params, root: Path, runtime: Runtime) -> None:
    """Measure every model; write metrics/evaluate.json and the plot CSVs under plots/evaluate/."""
    log = print if runtime.is_main else lambda _: None
    seed_everything(params.seed)
    if runtime.is_main:
        for path in undeclared_outputs(root, params):
            log(f"evaluate: removing {path.relative_to(root)}: params.yaml no longer declares its stage")
            shutil.rmtree(path)
    data = load_prepared(
        root / prepared_dir(params.data.name), splits=("train", "test"), workers=runtime.loader_workers
    )
    meter = ModelMeter(params, data.splits["test"].to(runtime.device), runtime)
    # NOTE: a seeded class-stratified sample, the same for every seed (data.seed), so a class-sorted
    # test split still shows several classes
    pictures = stratified_indices(data.splits["test"].labels.numpy(), params.evaluate.token_images, params.data.seed)
    picture_images = meter.test.images_at(torch.tensor(pictures))
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
        results[name] = {**meter.measure(name, model, meta), "weights_sha256": sha256_of(folder / WEIGHTS_FILE)}
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
        **probe_floors(params, data, runtime),
        "masked_teacher_top1": masked_teacher_top1(params, root, meter.test, runtime),
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
            "cpu": cpu_name(),
            # NOTE: runtime.amp 'auto' resolves by host (bf16 inference on a CPU with native bf16): the
            # report aggregates only seeds measured at the workspace's precision
            "precision": runtime.precision,
            "threads": torch.get_num_threads(),
            "throughput_batch": params.evaluate.throughput_batch,
            "test_images": len(meter.test),
            "occlusion_images": len(meter.occluded),
        },
    }
    if runtime.is_main:
        write_outputs(root, params, report, meter.occlusion_rows)
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
