"""DVC stage `distill@<student>-<target>`: task-agnostic KD into a ViT or EViT student, judged by probe and fine-tune.

`distill@<student>-<target>` distils `distill.teacher` into a fresh student without labels (see
`objectives.feature_kd`), then evaluates the distilled backbone twice. The target `scratch` is claim
C's control: the same student, never distilled, evaluated the same way.
  - linear probe: frozen backbone, linear head on its [CLS] features -> models/distill/<name>/probe/
  - fine-tune: every weight trained with labels for `distill.finetune` -> models/distill/<name>/finetune/
Both are complete models (backbone + head) that evaluate measures like every other model.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from maskprune import atomic
from maskprune.checkpoint import config_hash, model_meta, pretrained_digest, save_model
from maskprune.cli import run_stage
from maskprune.config import DistillSection, Params
from maskprune.data.storage import PreparedData, load_prepared
from maskprune.launch import checkpoint_root
from maskprune.layout import DistillVariant, prepared_dir
from maskprune.measure import gmacs, top1
from maskprune.models.loading import load_distill_teacher, normalizer_for
from maskprune.models.pruned import PruningSpec, make_pruned, pruning_blocks
from maskprune.models.vit import Stats, TokenViT, build_model, input_stats
from maskprune.objectives.classification import ClassificationObjective
from maskprune.objectives.feature_kd import FeatureKDObjective, ProjectedStudent
from maskprune.probe import fit_linear_probe, pooled_features
from maskprune.runtime import Runtime, seed_everything
from maskprune.tracking.runs import StageRecord
from maskprune.trainer import fit


def student_spec(variant: DistillVariant, cfg: DistillSection, depth: int) -> PruningSpec | None:
    if variant.student == "vit":
        return None
    return PruningSpec("evit", cfg.keep_rate, pruning_blocks(depth), fuse_token=True)


def distil(
    params: Params,
    root: Path,
    runtime: Runtime,
    chosen: DistillVariant,
    data: PreparedData,
    backbone: TokenViT,
    stats: Stats,
) -> tuple[str, list[dict[str, Any]]]:
    """Distil `distill.teacher` into `backbone` (its images standardised with `stats`) without labels (nothing
    for `scratch`); its config hash and history."""
    cfg = params.distill
    student = params.models.student
    common = (
        params.data,
        student,
        pretrained_digest(student),
        chosen.name,
        cfg.keep_rate,
        params.seed,
        data.meta["sources"],
    )
    if chosen.target == "scratch":
        return config_hash(*common, data.meta["counts"]), []
    teacher, teacher_meta = load_distill_teacher(params, data, root, runtime.device)
    digest = config_hash(*common, data.meta["counts"], cfg.loss, cfg.train, teacher_meta.get("config_hash", ""))
    history = fit(
        ProjectedStudent(backbone, teacher.embed_dim),
        data,
        cfg.train,
        FeatureKDObjective(teacher, chosen.target, cfg.loss),
        runtime,
        params.seed,
        checkpoint_root(params.runtime, root) / "distill" / chosen.name,
        digest,
        name=f"distill@{chosen.name}",
        normalize=normalizer_for(params.models.student, data.meta, runtime.device),
        section="distill.train",
        validate=False,
    )
    return digest, history


def compute(params: Params, root: Path, runtime: Runtime, variant: str) -> None:
    """Distil, probe and fine-tune one student; write both models and metrics."""
    chosen = DistillVariant.parse(variant)
    started = time.perf_counter()
    seed_everything(params.seed)
    cfg = params.distill
    prepared = load_prepared(root / prepared_dir(params.data.name), workers=runtime.loader_workers)
    data = prepared.limit_train(cfg.train.train_limit, params.seed)
    backbone = build_model(params.models.student, num_classes=data.num_classes, in_chans=data.in_chans)
    backbone.reset_classifier(0)  # NOTE: distillation trains no head (DDP refuses unused parameters)
    spec = student_spec(chosen, cfg, len(backbone.blocks))
    if spec is not None:
        backbone = make_pruned(backbone, spec)
    stats = input_stats(params.models.student, data.meta)
    digest, history = distil(params, root, runtime, chosen, data, backbone, stats)
    size = params.models.student.img_size
    normalize = normalizer_for(params.models.student, data.meta, runtime.device)
    train, val = data.splits["train"].to(runtime.device), data.splits["val"].to(runtime.device)

    probe = copy.deepcopy(backbone).to(runtime.device)
    features = pooled_features(probe, train, normalize, runtime, 256)
    probe.reset_classifier(data.num_classes)
    probe.head = fit_linear_probe(features, train.labels, data.num_classes, cfg.probe, params.seed)
    probe_top1 = top1(probe, val, normalize, runtime, 256)

    tuned = copy.deepcopy(backbone).to(runtime.device)
    tuned.reset_classifier(data.num_classes)
    tuned_data = prepared.limit_train(cfg.finetune.train_limit, params.seed)
    tuned_history = fit(
        tuned,
        tuned_data,
        cfg.finetune,
        ClassificationObjective(cfg.finetune.label_smoothing),
        runtime,
        params.seed,
        checkpoint_root(params.runtime, root) / "distill" / f"{chosen.name}-finetune",
        config_hash(digest, cfg.finetune),
        name=f"distill@{chosen.name} finetune",
        normalize=normalize,
        section="distill.finetune",
    )
    example = torch.randn(1, data.in_chans, size, size, device=runtime.device)
    metrics: dict[str, Any] = {
        "probe_val_top1": probe_top1,
        "finetune_val_top1": tuned_history[-1]["val_top1"],
        "gmacs": gmacs(backbone, example),
        "distill_images": len(data.splits["train"]),
        "finetune_images": len(tuned_data.splits["train"]),
        "wall_seconds": time.perf_counter() - started,
    }
    if history:  # NOTE: a scratch student has no distillation loss (and MLflow takes numbers only)
        metrics["distill_loss"] = history[-1]["train_loss"]
    if runtime.is_main:
        out = root / chosen.folder
        base = {
            **model_meta(params, data, "student"),
            "stage": f"distill@{chosen.name}",
            "student": chosen.student,
            "target": chosen.target,
            "teacher": None if chosen.target == "scratch" else cfg.teacher,
            "config_hash": digest,
            **({"pruning": spec.to_meta()} if spec else {}),
        }
        save_model(out / "probe", probe, {**base, "eval": "probe", "val_top1": probe_top1})
        save_model(
            out / "finetune",
            tuned,
            {**base, "eval": "finetune", "val_top1": metrics["finetune_val_top1"]},
        )
        atomic.write_text(
            out / "history.csv",
            pd.DataFrame(
                [{**r, "phase": "distill"} for r in history] + [{**r, "phase": "finetune"} for r in tuned_history]
            ).to_csv(index=False),
        )
        atomic.write_json(out / "metrics.json", metrics)
        print(
            f"distill@{chosen.name}: probe val_top1 {metrics['probe_val_top1']:.4f} finetune val_top1 "
            f"{metrics['finetune_val_top1']:.4f} {metrics['gmacs']:.4f} GMACs in {metrics['wall_seconds']:.0f}s "
            f"-> {chosen.folder}"
        )


def record(params: Params, root: Path, variant: str) -> StageRecord:
    chosen = DistillVariant.parse(variant)
    out = root / chosen.folder
    cfg = params.distill
    history = pd.read_csv(out / "history.csv")
    return StageRecord(
        stage=f"distill@{chosen.name}",
        params={
            "seed": params.seed,
            "data": {"name": params.data.name},
            "models": {"student": params.models.student.model_dump()},
            "distill": {
                "student": chosen.student,
                "target": chosen.target,
                "teacher": cfg.teacher,
                "keep_rate": cfg.keep_rate,
                "loss": cfg.loss,
                "train": cfg.train.model_dump(),
                "probe": cfg.probe.model_dump(),
                "finetune": cfg.finetune.model_dump(),
            },
            "runtime": params.runtime.model_dump(),
        },
        metrics=json.loads((out / "metrics.json").read_text()),
        history=history[history["phase"] == "distill"].drop(columns="phase").dropna(axis=1).to_dict("records"),
        artifacts=[out / "metrics.json", out / "history.csv", out / "probe", out / "finetune"],
        tags={"student": chosen.student, "target": chosen.target},
    )


def batch_sizes(params: Params, variant: str) -> dict[str, int]:
    """The global batches of the distillation (none for `scratch`) and of the fine-tune."""
    loops = {"distill.finetune.batch_size": params.distill.finetune.batch_size}
    if DistillVariant.parse(variant).target != "scratch":
        loops["distill.train.batch_size"] = params.distill.train.batch_size
    return loops


if __name__ == "__main__":
    run_stage("distill", compute, record, variants=DistillVariant.parse, batch_sizes=batch_sizes)
