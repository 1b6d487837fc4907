"""The finetune stage: the student fine-tuned as `full`, `masked` or `masked_kd`.

Each variant starts from `finetune.init` (scratch, the student's local timm weights, or a
maskprune model folder such as a pre-trained backbone), trains with the shared recipe
`finetune.train`, and distils from models/teacher where it uses a teacher. Besides the model it
reports the cost of training: the teacher's GMACs per image as it ran, its measured throughput
against the unmasked teacher timed in the same process, and the stage's total training FLOPs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from maskprune import atomic
from maskprune.checkpoint import (
    WEIGHTS_FILE,
    config_hash,
    load_model,
    load_tensors,
    model_meta,
    read_meta,
    save_model,
)
from maskprune.config import FINETUNE_VARIANTS as VARIANTS
from maskprune.config import ModelSpec, Params
from maskprune.data.loader import PreparedData, load_prepared
from maskprune.distill import MaskedDistillation, TeacherView
from maskprune.errors import MaskpruneError
from maskprune.masking import HybridRatios
from maskprune.measure import gmacs, paired_throughput
from maskprune.models.vit import TokenViT, build_model
from maskprune.runtime import Runtime, seed_everything
from maskprune.train import fit

TEACHER_DIR = Path("models") / "teacher"


def init_student(params: Params, data: PreparedData, root: Path) -> tuple[TokenViT, dict[str, Any]]:
    """The student as `finetune.init` says, and a description of where its weights came from."""
    spec = params.models.student
    model = build_model(spec, num_classes=data.num_classes, in_chans=data.in_chans)
    init = params.finetune.init
    if init in ("scratch", "pretrained_file"):
        return model, {"init": init, "init_file": spec.pretrained_file}
    folder = (root / init) if not Path(init).is_absolute() else Path(init)
    if not folder.is_dir():
        raise MaskpruneError(
            f"finetune.init {init!r} is not scratch, pretrained_file or an existing "
            "model folder; run the stage that writes it or fix the path"
        )
    meta = load_backbone(model, folder, spec)
    return model, {"init": init, "init_config_hash": meta.get("config_hash", "")}


def load_backbone(model: TokenViT, folder: Path, spec: ModelSpec) -> dict[str, Any]:
    """Load every weight of a maskprune checkpoint except the classifier head into `model`."""
    meta = read_meta(folder)
    theirs = ModelSpec.model_validate(meta["model"])
    if (theirs.name, theirs.img_size, theirs.patch_size) != (spec.name, spec.img_size, spec.patch_size):
        raise MaskpruneError(
            f"{folder} holds a {theirs.name} at {theirs.img_size}px / patch {theirs.patch_size}, "
            f"but models.student is a {spec.name} at {spec.img_size}px / patch "
            f"{spec.patch_size}; make them match or init from scratch"
        )
    tensors = load_tensors(folder / WEIGHTS_FILE)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing = [k for k in own if k not in tensors]
    wrong = [k for k, v in own.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or wrong:
        raise MaskpruneError(
            f"{folder}: weights do not fit models.student (missing {missing[:3]}, "
            f"wrong shape {wrong[:3]}); rerun the stage that wrote it"
        )
    model.load_state_dict({k: tensors[k] for k in own}, strict=False)
    return meta


def load_teacher(params: Params, data: PreparedData, root: Path, device: torch.device) -> tuple[TokenViT, str]:
    """models/teacher, checked against params.models.teacher and the prepared data."""
    folder = root / TEACHER_DIR
    meta = read_meta(folder)
    expected = params.models.teacher.model_dump()
    if meta["model"] != expected:
        raise MaskpruneError(
            f"{TEACHER_DIR} was trained as {meta['model']} but params.yaml has "
            f"models.teacher {expected}; rerun `dvc repro teacher`"
        )
    if meta["data"] != data.meta["name"] or meta["num_classes"] != data.num_classes:
        raise MaskpruneError(
            f"{TEACHER_DIR} was trained on {meta['data']!r}, not on the prepared "
            f"{data.meta['name']!r}; rerun `dvc repro teacher`"
        )
    model, _ = load_model(folder, device)
    return model, str(meta.get("config_hash", ""))


def teacher_view(params: Params, variant: str, teacher: TokenViT | None) -> TeacherView | None:
    if teacher is None:
        return None
    if variant == "masked_kd":
        cfg = params.finetune.masked_kd
        return TeacherView(teacher, cfg.teacher_keep, cfg.criterion)
    return TeacherView(teacher)


def student_masking(params: Params, variant: str) -> HybridRatios:
    if variant == "full":
        return HybridRatios([1.0], [1.0])
    cfg = getattr(params.finetune, variant)
    return HybridRatios(cfg.keep_ratios, cfg.probs)


def teacher_speed(view: TeacherView, shape: tuple[int, ...], params: Params, runtime: Runtime) -> dict[str, float]:
    """The teacher's GMACs and throughput as this variant runs it, and as ratios to the full image.

    Patches are chosen from synthetic student attention; selection time is included.
    """
    cfg = params.evaluate
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


def train_finetune(params: Params, variant: str, root: Path, out_dir: Path, runtime: Runtime) -> dict[str, Any]:
    """Fine-tune the student as `variant`; write weights, meta, history and metrics to `out_dir`."""
    if variant not in VARIANTS:
        raise MaskpruneError(f"unknown finetune variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    started = time.perf_counter()
    seed_everything(params.seed)
    cfg = params.finetune
    data = load_prepared(root / "data" / "prepared" / params.data.name).limit_train(cfg.train.train_limit, params.seed)
    student, init = init_student(params, data, root)
    uses_teacher = variant != "full" or cfg.full.kd
    teacher, teacher_hash = load_teacher(params, data, root, runtime.device) if uses_teacher else (None, "")
    view = teacher_view(params, variant, teacher)
    objective = MaskedDistillation(
        student.num_patches,
        student_masking(params, variant),
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
        root / "checkpoints" / "finetune" / variant,
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
        speed = teacher_speed(view, shape, params, runtime)
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
        meta = {
            **model_meta(params, data, "student"),
            "stage": f"finetune@{variant}",
            "variant": variant,
            "config_hash": digest,
            "val_top1": last["val_top1"],
            **init,
        }
        save_model(out_dir, student, meta)
        atomic.write_text(out_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
        atomic.write_json(out_dir / "metrics.json", metrics)
    return metrics
