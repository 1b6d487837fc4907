"""DVC stage `finetune@<arm>`: the student fine-tuned as one arm of claims A and B.

Every arm starts from `finetune.init` (scratch, the student's local timm weights, or a maskprune
model folder such as a pre-trained backbone) and trains with the shared recipe `finetune.train`:
  - full:      labels only (MaskedKD's no-KD arm; the full init of claim A)
  - full_kd:   + KD from models/teacher on the full image (MaskedKD's keep-1.0 arm)
  - masked_kd: + KD from models/teacher seeing `teacher_keep` of the patches, those the student's
               last-block [CLS] attention ranks highest (MaskedKD)
  - random_kd: + KD from models/teacher seeing as many patches, chosen at random (its control)
  - masked:    masked fine-tuning: the student sees a random subset of patches and distils from
               the fine-tuned `full` model (Shi & Wang learn from the fully fine-tuned model)
Besides the model it reports the cost of training: the teacher's GMACs per image as it ran, its
measured throughput against the same teacher on the full image timed in the same process (with an
A/A control), and the stage's total training FLOPs.
It writes models/finetune/<arm>/: weights, meta.json, history.csv and metrics.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from maskprune import atomic
from maskprune.checkpoint import WEIGHTS_FILE, config_hash, model_meta, pretrained_digest, save_model
from maskprune.cli import run_stage
from maskprune.config import FINETUNE_VARIANTS, EvaluateSection, FinetuneSection, Params
from maskprune.data.storage import PreparedData, load_prepared
from maskprune.errors import MaskpruneError
from maskprune.launch import checkpoint_root
from maskprune.layout import FINETUNE_DIR, prepared_dir
from maskprune.masking import HybridRatios
from maskprune.measure import gmacs, paired_throughput
from maskprune.models.loading import init_student, load_init, load_teacher, normalizer_for
from maskprune.models.vit import Stats, TokenViT, input_stats
from maskprune.objectives.masked_finetune import MaskedFinetuneObjective
from maskprune.objectives.masked_kd import TeacherView, teacher_view
from maskprune.runtime import Runtime, seed_everything
from maskprune.tracking.runs import StageRecord
from maskprune.trainer import fit


def student_masking(cfg: FinetuneSection, variant: str) -> HybridRatios:
    """The student's keep ratios: masked fine-tuning's, MaskedKD's (both of its arms), or the full image."""
    masking = {"masked": cfg.masked, "masked_kd": cfg.masked_kd, "random_kd": cfg.masked_kd}.get(variant)
    if masking is None:
        return HybridRatios([1.0], [1.0])
    return HybridRatios(masking.keep_ratios, masking.probs)


def arm_teacher(
    params: Params, variant: str, data: PreparedData, root: Path, device: torch.device, stats: Stats
) -> tuple[TokenViT | None, str]:
    """The arm's teacher and its config hash: none, models/teacher, or the fine-tuned `full` arm; it
    takes the student's images, standardised with `stats`."""
    if variant == "full":
        return None, ""
    if variant == "masked":
        model, meta = load_init(params.models.student, "full", root, device)
        return model.eval().requires_grad_(False), str(meta.get("config_hash", ""))
    return load_teacher(params.models.teacher, data, root, device, stats)


def teacher_speed(
    view: TeacherView, shape: tuple[int, ...], cfg: EvaluateSection, runtime: Runtime
) -> dict[str, float]:
    """The teacher's GMACs and throughput as this variant runs it, and as ratios to the full image.

    Patches are chosen from synthetic student attention; selection time is included.
    """
    batch = torch.randn(cfg.throughput_batch, *shape, device=runtime.device)
    scores = torch.rand(cfg.throughput_batch, view.num_patches, device=runtime.device)
    teacher = view.teacher

    speed = paired_throughput(
        lambda: teacher(batch, keep_idx=view.select(batch, None, scores)),
        lambda: teacher(batch),
        len(batch),
        runtime,
        cfg.throughput_warmup,
        cfg.throughput_repeats,
    )
    return {
        "teacher_gmacs_full": gmacs(teacher, batch[:1]),
        "teacher_img_per_s": speed.img_per_s,
        "teacher_img_per_s_full": speed.reference_img_per_s,
        "teacher_throughput_ratio": speed.ratio,
        "teacher_aa_ratio": speed.aa_ratio,
    }


def compute(params: Params, root: Path, runtime: Runtime, variant: str) -> None:
    """Fine-tune the student as `variant`; write weights, meta, history and metrics."""
    if variant not in FINETUNE_VARIANTS:
        raise MaskpruneError(f"unknown finetune variant {variant!r}; choose one of {', '.join(FINETUNE_VARIANTS)}")
    started = time.perf_counter()
    seed_everything(params.seed)
    cfg = params.finetune
    data = load_prepared(root / prepared_dir(params.data.name), workers=runtime.loader_workers).limit_train(
        cfg.train.train_limit, params.seed
    )
    student, init = init_student(params, data, root)
    stats = input_stats(params.models.student, data.meta)
    teacher, teacher_hash = arm_teacher(params, variant, data, root, runtime.device, stats)
    uses_teacher = teacher is not None
    view = teacher_view(cfg, variant, teacher)
    objective = MaskedFinetuneObjective(
        student.num_patches,
        student_masking(cfg, variant),
        view,
        cfg.kd,
        cfg.train.label_smoothing,
        runtime.world_size,
    )
    variant_cfg = cfg.masked_kd if variant == "random_kd" else getattr(cfg, variant)
    digest = config_hash(
        params.data,
        params.models.student,
        init,
        pretrained_digest(params.models.student),
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
        checkpoint_root(params.runtime, root) / "finetune" / variant,
        digest,
        name=f"finetune@{variant}",
        normalize=normalizer_for(params.models.student, data.meta, runtime.device),
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
        size = (params.models.student if variant == "masked" else params.models.teacher).img_size
        shape = (data.in_chans, size, size)
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
        artifacts=[out / "metrics.json", out / "history.csv", out / "meta.json"],
        model_weights=out / WEIGHTS_FILE,
    )


def batch_sizes(params: Params, variant: str) -> dict[str, int]:
    return {"finetune.train.batch_size": params.finetune.train.batch_size}


if __name__ == "__main__":
    run_stage("finetune", compute, record, variants=FINETUNE_VARIANTS, batch_sizes=batch_sizes)
