"""The distill stage: task-agnostic KD into a ViT or EViT student, judged by probe and fine-tune.

`distill@<student>-<target>` distils `distill.teacher` into a fresh student without labels (see
`feature_kd`), then evaluates the distilled backbone twice:
  - linear probe: frozen backbone, linear head on its [CLS] features -> models/distill/<name>/probe/
  - fine-tune: every weight trained with labels for `distill.finetune` -> models/distill/<name>/finetune/
Both are complete models (backbone + head) that evaluate measures like every other model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from maskprune import atomic
from maskprune.checkpoint import config_hash, load_model, model_meta, save_model
from maskprune.config import DistillSection, Params
from maskprune.data.loader import Normalizer, PreparedData, load_prepared
from maskprune.errors import MaskpruneError
from maskprune.feature_kd import FeatureDistillation, ProjectedStudent
from maskprune.measure import gmacs, top1
from maskprune.models.pruned import PruningSpec, make_pruned, pruning_blocks
from maskprune.models.vit import TokenViT, build_model
from maskprune.probe import fit_linear_probe, pooled_features
from maskprune.runtime import Runtime, seed_everything
from maskprune.stage import matrix_item
from maskprune.train import ClassificationObjective, fit

STUDENTS = ("vit", "evit")
TARGETS = ("cls", "cls_tokens")


@dataclass(frozen=True)
class DistillVariant:
    student: str
    target: str

    @property
    def name(self) -> str:
        return f"{self.student}-{self.target}"

    @classmethod
    def parse(cls, text: str) -> DistillVariant:
        """'<student>-<target>' as DVC's matrix names it, e.g. 'evit-cls_tokens'."""
        return cls(*matrix_item(text, "distill", ("student", "target"), (STUDENTS, TARGETS)))


def student_spec(variant: DistillVariant, cfg: DistillSection, depth: int) -> PruningSpec | None:
    if variant.student == "vit":
        return None
    return PruningSpec("evit", cfg.keep_rate, pruning_blocks(depth), fuse_token=True)


def load_distill_teacher(params: Params, data: PreparedData, root: Path, device: torch.device) -> tuple[TokenViT, dict]:
    folder = Path(params.distill.teacher)
    folder = folder if folder.is_absolute() else root / folder
    teacher, meta = load_model(folder, device)
    student = params.models.student
    if teacher.num_patches != (student.img_size // student.patch_size) ** 2 or meta["in_chans"] != data.in_chans:
        raise MaskpruneError(
            f"distill.teacher {folder} sees {teacher.num_patches} patches of {meta['in_chans']} "
            "channels, the student a different grid or data; use a teacher with the "
            "student's patch grid"
        )
    return teacher, meta


def train_task_agnostic(
    params: Params, variant: DistillVariant, root: Path, out_dir: Path, runtime: Runtime
) -> dict[str, Any]:
    """Distil, probe and fine-tune one student; write both models and metrics under `out_dir`."""
    started = time.perf_counter()
    seed_everything(params.seed)
    cfg = params.distill
    prepared = load_prepared(root / "data" / "prepared" / params.data.name)
    data = prepared.limit_train(cfg.train.train_limit, params.seed)
    teacher, teacher_meta = load_distill_teacher(params, data, root, runtime.device)
    backbone = build_model(params.models.student, num_classes=data.num_classes, in_chans=data.in_chans)
    backbone.reset_classifier(0)  # NOTE: distillation trains no head (DDP refuses unused parameters)
    spec = student_spec(variant, cfg, len(backbone.blocks))
    if spec is not None:
        backbone = make_pruned(backbone, spec)
    student = ProjectedStudent(backbone, teacher.embed_dim)
    digest = config_hash(
        params.data,
        params.models.student,
        variant.name,
        cfg.keep_rate,
        cfg.loss,
        cfg.train,
        teacher_meta.get("config_hash", ""),
        params.seed,
        data.meta["sources"],
        data.meta["counts"],
    )
    history = fit(
        student,
        data,
        cfg.train,
        FeatureDistillation(teacher, variant.target, cfg.loss),
        runtime,
        params.seed,
        root / "checkpoints" / "distill" / variant.name,
        digest,
        name=f"distill@{variant.name}",
        img_size=params.models.student.img_size,
        section="distill.train",
        validate=False,
    )
    del teacher
    size = params.models.student.img_size
    normalize = Normalizer(data.meta["mean"], data.meta["std"], size, runtime.device)
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
        root / "checkpoints" / "distill" / f"{variant.name}-finetune",
        config_hash(digest, cfg.finetune),
        name=f"distill@{variant.name} finetune",
        img_size=size,
        section="distill.finetune",
    )
    example = torch.randn(1, data.in_chans, size, size, device=runtime.device)
    metrics = {
        "distill_loss": history[-1]["train_loss"],
        "probe_val_top1": probe_top1,
        "finetune_val_top1": tuned_history[-1]["val_top1"],
        "gmacs": gmacs(backbone, example),
        "distill_images": len(data.splits["train"]),
        "finetune_images": len(tuned_data.splits["train"]),
        "wall_seconds": time.perf_counter() - started,
    }
    if runtime.is_main:
        base = {
            **model_meta(params, data, "student"),
            "stage": f"distill@{variant.name}",
            "student": variant.student,
            "target": variant.target,
            "teacher": cfg.teacher,
            "config_hash": digest,
            **({"pruning": spec.to_meta()} if spec else {}),
        }
        save_model(out_dir / "probe", probe, {**base, "eval": "probe", "val_top1": probe_top1})
        save_model(
            out_dir / "finetune",
            tuned,
            {**base, "eval": "finetune", "val_top1": metrics["finetune_val_top1"]},
        )
        atomic.write_text(
            out_dir / "history.csv",
            pd.DataFrame(
                [{**r, "phase": "distill"} for r in history] + [{**r, "phase": "finetune"} for r in tuned_history]
            ).to_csv(index=False),
        )
        atomic.write_json(out_dir / "metrics.json", metrics)
    return metrics
