"""The pipeline's stage checkpoints loaded as the model a stage needs, checked against params.

Each loader refuses, in one line that names the fix, a checkpoint that does not fit the model the
params describe: another architecture, image size or patch grid, or other prepared data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from maskprune.checkpoint import WEIGHTS_FILE, load_model, load_tensors, read_meta
from maskprune.config import ModelSpec, Params
from maskprune.data.loader import Normalizer
from maskprune.data.storage import PreparedData
from maskprune.errors import MaskpruneError
from maskprune.layout import FINETUNE_DIR, TEACHER_DIR
from maskprune.models.vit import (
    Stats,
    TokenViT,
    build_model,
    eval_crop_pct,
    input_stats,
    pretrained_classes,
    take_inputs_as,
)


def init_student(params: Params, data: PreparedData, root: Path) -> tuple[TokenViT, dict[str, Any]]:
    """The student as `finetune.init` says, and a description of where its weights came from."""
    return init_model(params.models.student, "student", params.finetune.init, "finetune.init", data, root)


def init_teacher(params: Params, data: PreparedData, root: Path) -> tuple[TokenViT, dict[str, Any]]:
    """The supervised teacher as `teacher.init` says (e.g. claim C's MAE teacher), and where its weights came from.

    With `teacher.epochs` 0 it is used as it is, so its classifier comes with its weights too.
    """
    cfg = params.teacher
    return init_model(params.models.teacher, "teacher", cfg.init, "teacher.init", data, root, whole=not cfg.epochs)


def init_model(
    spec: ModelSpec,
    role: str,
    init: str,
    key: str,
    data: PreparedData,
    root: Path,
    whole: bool = False,
) -> tuple[TokenViT, dict[str, Any]]:
    """`models.<role>` built fresh for the data, its backbone from `init` (the params key `key`).

    Args:
        init: scratch, pretrained_file (the spec's local timm weights) or a maskprune model folder.
        whole: the classifier head from `init` too (a model used as it is, untrained); it must
            have the data's number of classes.
    """
    model = build_model(spec, num_classes=data.num_classes, in_chans=data.in_chans)
    if init in ("scratch", "pretrained_file"):
        classes = pretrained_classes(spec.pretrained_file) if whole and spec.pretrained_file else None
        if whole and classes != data.num_classes:
            has = f"a {classes}-class classifier" if classes else "no classifier"
            raise MaskpruneError(
                f"{key} {init!r} is used as it is (no training epochs), but {spec.pretrained_file or 'scratch'} "
                f"has {has} for the data's {data.num_classes} classes; train it or give weights fine-tuned on this data"
            )
        return model, {"init": init, "init_file": spec.pretrained_file}
    folder = (root / init) if not Path(init).is_absolute() else Path(init)
    if not folder.is_dir():
        raise MaskpruneError(
            f"{key} {init!r} is not scratch, pretrained_file or an existing "
            "model folder; run the stage that writes it or fix the path"
        )
    meta = load_backbone(model, folder, spec, role, head=whole)
    take_inputs_as(model, (meta["mean"], meta["std"]), input_stats(spec, data.meta))  # NOTE: no-op for its own data
    return model, {"init": init, "init_config_hash": meta.get("config_hash", "")}


def load_backbone(
    model: TokenViT, folder: Path, spec: ModelSpec, role: str = "student", head: bool = False
) -> dict[str, Any]:
    """Load every weight of a maskprune checkpoint into `model` (`models.<role>`); its head only if `head`."""
    meta = read_meta(folder)
    if head and (meta["num_classes"], meta.get("global_pool", model.global_pool)) != (
        model.num_classes,
        model.global_pool,
    ):
        raise MaskpruneError(
            f"{folder} is used as it is (no training epochs), but its head is not a {model.num_classes}-class "
            f"classifier on the {model.global_pool} features; train it or init from such a model"
        )
    theirs = ModelSpec.model_validate(meta["model"])
    if (theirs.name, theirs.img_size, theirs.patch_size) != (spec.name, spec.img_size, spec.patch_size):
        raise MaskpruneError(
            f"{folder} holds a {theirs.name} at {theirs.img_size}px / patch {theirs.patch_size}, "
            f"but models.{role} is a {spec.name} at {spec.img_size}px / patch "
            f"{spec.patch_size}; make them match or init from scratch"
        )
    tensors = load_tensors(folder / WEIGHTS_FILE)
    own = {k: v for k, v in model.state_dict().items() if head or not k.startswith("head.")}
    missing = [k for k in own if k not in tensors]
    wrong = [k for k, v in own.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or wrong:
        raise MaskpruneError(
            f"{folder}: weights do not fit models.{role} (missing {missing[:3]}, "
            f"wrong shape {wrong[:3]}); rerun the stage that wrote it"
        )
    model.load_state_dict({k: tensors[k] for k in own}, strict=False)
    return meta


def load_teacher(
    spec: ModelSpec, data: PreparedData, root: Path, device: torch.device, inputs: Stats
) -> tuple[TokenViT, str]:
    """models/teacher, checked against `spec` (models.teacher) and the prepared data, changed to take
    images standardised with `inputs` (the student's mean and std; `take_inputs_as`)."""
    folder = root / TEACHER_DIR
    meta = read_meta(folder)
    expected = spec.model_dump()
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
    return take_inputs_as(model, (meta["mean"], meta["std"]), inputs), str(meta.get("config_hash", ""))


def load_init(spec: ModelSpec, init: str, root: Path, device: torch.device) -> tuple[TokenViT, dict[str, Any]]:
    """The unpruned finetune variant `init`, checked against `spec` (models.student)."""
    folder = root / FINETUNE_DIR / init
    model, meta = load_model(folder, device)
    expected = spec.model_dump()
    if meta["model"] != expected or meta.get("pruning"):
        raise MaskpruneError(
            f"{folder} holds a {meta['model']['name']} ({meta['model']}), not an unpruned "
            f"models.student {expected}; rerun `dvc repro finetune@{init}`"
        )
    return model, meta


def load_distill_teacher(params: Params, data: PreparedData, root: Path, device: torch.device) -> tuple[TokenViT, dict]:
    """`distill.teacher`, checked to see the student's patch grid and the prepared data's channels, changed
    to take the student's images (`take_inputs_as`)."""
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
    return take_inputs_as(teacher, (meta["mean"], meta["std"]), input_stats(student, data.meta)), meta


def normalizer_for(spec: ModelSpec, data_meta: dict[str, Any], device: torch.device) -> Normalizer:
    """How `spec` takes the prepared data's images: its `input_stats`, its img_size and its `eval_crop_pct`."""
    return Normalizer(*input_stats(spec, data_meta), spec.img_size, device, eval_crop_pct(spec, data_meta))
