"""DVC stage `finetune@<variant>`: the student fine-tuned as `full`, `masked` or `masked_kd`.

Each variant starts from `finetune.init` (scratch, the student's local timm weights, or a
maskprune model folder such as a pre-trained backbone), trains with the shared recipe
`finetune.train`, and distils from models/teacher where it uses a teacher. Besides the model it
reports the cost of training: the teacher's GMACs per image as it ran, its measured throughput
against the unmasked teacher timed in the same process, and the stage's total training FLOPs.
It writes models/finetune/<variant>/: weights, meta.json, history.csv and metrics.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from maskprune import atomic
from maskprune.checkpoint import config_hash, model_meta, save_model
from maskprune.cli import run_stage
from maskprune.config import FINETUNE_VARIANTS, EvaluateSection, FinetuneSection, Params
from maskprune.data.loader import load_prepared
from maskprune.errors import MaskpruneError
from maskprune.layout import CHECKPOINTS_DIR, FINETUNE_DIR, prepared_dir
from maskprune.masking import HybridRatios
from maskprune.measure import gmacs, paired_throughput
from maskprune.models.loading import init_student, load_teacher
from maskprune.models.vit import TokenViT
from maskprune.objectives.masked_finetune import MaskedFinetuneObjective
from maskprune.objectives.masked_kd import TeacherView
from maskprune.runtime import Runtime, seed_everything
from maskprune.tracking.runs import StageRecord
from maskprune.trainer import fit


def teacher_view(cfg: FinetuneSection, variant: str, teacher: TokenViT | None) -> TeacherView | None:
    if teacher is None:
        return None
    if variant == "masked_kd":
        return TeacherView(teacher, cfg.masked_kd.teacher_keep, cfg.masked_kd.criterion)
    return TeacherView(teacher)


def student_masking(cfg: FinetuneSection, variant: str) -> HybridRatios:
    if variant == "full":
        return HybridRatios([1.0], [1.0])
    masking = getattr(cfg, variant)
    return HybridRatios(masking.keep_ratios, masking.probs)


def teacher_speed(
    view: TeacherView, shape: tuple[int, ...], cfg: EvaluateSection, runtime: Runtime
) -> dict[str, float]:
    """The teacher's GMACs and throughput as this variant runs it, and as ratios to the full image.

    Patches are chosen from synthetic student attention; selection time is included.
    """
    batch = torch.randn(cfg.throughput_batch, *shape, device=runtime.device)
    scores = torch.rand(cfg.throughput_batch, view.num_patches, device=runtime.device)
    teacher = view.teacher

    own_img_s, full_img_s = paired_throughput(
        lambda: teacher(batch, keep_idx=view.select(batch, None, scores)),
        lambda: teacher(batch),
        len(batch),
        runtime,
        cfg.throughput_warmup,
        cfg.throughput_repeats,
    )
    return {
        "teacher_gmacs_full": gmacs(teacher, batch[:1]),
        "teacher_img_per_s": own_img_s,
        "teacher_img_per_s_full": full_img_s,
        "teacher_throughput_ratio": own_img_s / full_img_s,
    }


def compute(params: Params, root: Path, runtime: Runtime, variant: str) -> None:
    """Fine-tune the student as `variant`; write weights, meta, history and metrics."""
    if variant not in FINETUNE_VARIANTS:
        raise MaskpruneError(f"unknown finetune variant {variant!r}; choose one of {', '.join(FINETUNE_VARIANTS)}")
    started = time.perf_counter()
    seed_everything(params.seed)
    cfg = params.finetune
    data = load_prepared(root / prepared_dir(params.data.name)).limit_train(cfg.train.train_limit, params.seed)
    student, init = init_student(params, data, root)
    uses_teacher = variant != "full" or cfg.full.kd
    teacher, teacher_hash = (
        load_teacher(params.models.teacher, data, root, runtime.device) if uses_teacher else (None, "")
    )
    view = teacher_view(cfg, variant, teacher)
    objective = MaskedFinetuneObjective(
        student.num_patches,
        student_masking(cfg, variant),
        view,
        cfg.kd,
        cfg.train.label_smoothing,
        runtime.world_size,
    )
    variant_cfg = getattr(cfg, variant)
    digest = config_hash(
        params.data,
        params.models.student,
        init,
        cfg.train,
        cfg.kd if uses_teacher else None,
        variant,
        variant_cfg,
        teacher_hash,
        params.seed,
        data.meta["sources"],
        data.meta["counts"],
    )
    history = fit(
        student,
        data,
        cfg.train,
        objective,
        runtime,
        params.seed,
        root / CHECKPOINTS_DIR / "finetune" / variant,
        digest,
        name=f"finetune@{variant}",
        img_size=params.models.student.img_size,
        section="finetune.train",
    )
    last = history[-1]
    metrics: dict[str, Any] = {
        "val_top1": last["val_top1"],
        "train_loss": last["train_loss"],
        "epochs": len(history),
        "train_images": len(data.splits["train"]),
        "train_img_per_s": sum(r["img_per_s"] for r in history) / len(history),
        "train_tflops": sum(r["train_gflops"] for r in history) / 1e3,
        "student_keep_mean": sum(r["student_keep_mean"] for r in history) / len(history),
    }
    if view is not None:
        shape = (data.in_chans, params.models.teacher.img_size, params.models.teacher.img_size)
        speed = teacher_speed(view, shape, params.evaluate, runtime)
        per_image = sum(r["teacher_gmacs_per_image"] for r in history) / len(history)
        metrics.update(
            {
                "teacher_keep": view.keep / view.num_patches,
                "teacher_tokens": view.keep,
                "teacher_gmacs_per_image": per_image,
                "teacher_gmacs_ratio": per_image / speed["teacher_gmacs_full"],
                "teacher_train_tflops": sum(r["teacher_gflops"] for r in history) / 1e3,
                **speed,
            }
        )
    metrics["wall_seconds"] = time.perf_counter() - started
    if runtime.is_main:
        out = root / FINETUNE_DIR / variant
        meta = {
            **model_meta(params, data, "student"),
            "stage": f"finetune@{variant}",
            "variant": variant,
            "config_hash": digest,
            "val_top1": last["val_top1"],
            **init,
        }
        save_model(out, student, meta)
        atomic.write_text(out / "history.csv", pd.DataFrame(history).to_csv(index=False))
        atomic.write_json(out / "metrics.json", metrics)
        teacher_note = (
            f" teacher {metrics['teacher_gmacs_per_image']:.4f} GMACs/img "
            f"({metrics['teacher_throughput_ratio']:.2f}x img/s of full)"
            if view is not None
            else ""
        )
        print(
            f"finetune@{variant}: val_top1 {metrics['val_top1']:.4f}{teacher_note} "
            f"{metrics['train_tflops']:.1f} TFLOPs in {metrics['wall_seconds']:.0f}s -> {FINETUNE_DIR / variant}"
        )


def record(params: Params, root: Path, variant: str) -> StageRecord:
    out = root / FINETUNE_DIR / variant
    cfg = params.finetune
    return StageRecord(
        stage=f"finetune@{variant}",
        params={
            "seed": params.seed,
            "data": {"name": params.data.name},
            "models": {
                "student": params.models.student.model_dump(),
                "teacher": params.models.teacher.model_dump(),
            },
            "finetune": {
                "variant": variant,
                "init": cfg.init,
                "train": cfg.train.model_dump(),
                "kd": cfg.kd.model_dump(),
                variant: getattr(cfg, variant).model_dump(),
            },
            "runtime": params.runtime.model_dump(),
        },
        metrics=json.loads((out / "metrics.json").read_text()),
        history=pd.read_csv(out / "history.csv").to_dict("records"),
        artifacts=[out / "metrics.json", out / "history.csv", out / "meta.json", out / "model.safetensors"],
    )


if __name__ == "__main__":
    run_stage("finetune", compute, record, variants=FINETUNE_VARIANTS)
