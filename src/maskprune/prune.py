"""The prune stage: EViT or DynamicViT trained from a finetune variant at one keep rate.

`prune@<method>-<init>-<keep>` loads models/finetune/<init>/, turns it into the pruned model
(pruning at `prune.locations`), trains it with the method's loss and KD from models/teacher,
and writes models/prune/<method>-<init>-<keep>/. The model physically drops tokens at inference.
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
from maskprune.config import FINETUNE_VARIANTS, Params
from maskprune.data.loader import load_prepared
from maskprune.distill import TeacherView
from maskprune.errors import MaskpruneError
from maskprune.finetune import load_teacher
from maskprune.measure import gmacs
from maskprune.models.pruned import METHODS, PruningSpec, make_pruned, pruning_blocks
from maskprune.models.vit import TokenViT
from maskprune.pruning import DynamicViTLoss, EViTDistillation
from maskprune.runtime import Runtime, seed_everything
from maskprune.train import BackboneLR, fit

FINETUNE_DIR = Path("models") / "finetune"


@dataclass(frozen=True)
class PruneVariant:
    method: str
    init: str
    keep_rate: float

    @property
    def name(self) -> str:
        return f"{self.method}-{self.init}-{self.keep_rate:g}"

    @classmethod
    def parse(cls, text: str) -> PruneVariant:
        """'<method>-<init>-<keep>' as DVC's matrix names it, e.g. 'evit-masked-0.5'."""
        method, _, rest = text.partition("-")
        init, _, keep = rest.rpartition("-")
        try:
            rate = float(keep)
        except ValueError:
            rate = -1.0
        if method not in METHODS or init not in FINETUNE_VARIANTS or not 0.0 < rate <= 1.0:
            raise MaskpruneError(
                f"prune variant {text!r} is not <method>-<init>-<keep> with method in "
                f"{METHODS}, init in {FINETUNE_VARIANTS} and keep in (0, 1]"
            )
        return cls(method, init, rate)


def load_init(params: Params, init: str, root: Path, device: torch.device) -> tuple[TokenViT, dict[str, Any]]:
    """The unpruned finetune variant `init`, checked against models.student."""
    folder = root / FINETUNE_DIR / init
    model, meta = load_model(folder, device)
    expected = params.models.student.model_dump()
    if meta["model"] != expected or meta.get("pruning"):
        raise MaskpruneError(
            f"{folder} holds a {meta['model']['name']} ({meta['model']}), not an unpruned "
            f"models.student {expected}; rerun `dvc repro finetune@{init}`"
        )
    return model, meta


def train_prune(params: Params, variant: PruneVariant, root: Path, out_dir: Path, runtime: Runtime) -> dict[str, Any]:
    """Train the pruned model `variant`; write weights, meta, history and metrics to `out_dir`."""
    started = time.perf_counter()
    seed_everything(params.seed)
    cfg = params.prune
    data = load_prepared(root / "data" / "prepared" / params.data.name).limit_train(cfg.train.train_limit, params.seed)
    model, init_meta = load_init(params, variant.init, root, runtime.device)
    unpruned = copy.deepcopy(model).eval().requires_grad_(False)
    spec = PruningSpec(
        variant.method,
        variant.keep_rate,
        pruning_blocks(len(model.blocks), cfg.locations),
        cfg.evit.fuse_token if variant.method == "evit" else False,
    )
    model = make_pruned(model, spec)
    teacher, teacher_hash = load_teacher(params, data, root, runtime.device)
    view = TeacherView(teacher)
    backbone_lr = None
    if variant.method == "evit":
        objective: Any = EViTDistillation(model, view, cfg.kd, cfg.train.label_smoothing, cfg.evit.keep_warmup_epochs)
        method_cfg: Any = cfg.evit
    else:
        method_cfg = cfg.dynamicvit
        objective = DynamicViTLoss(
            variant.keep_rate, view, unpruned, method_cfg, cfg.kd.temperature, cfg.train.label_smoothing
        )
        backbone_lr = BackboneLR(("score_predictor.",), method_cfg.backbone_lr_scale, method_cfg.freeze_epochs)
        for frozen in (model.cls_token, model.pos_embed):  # NOTE: frozen in DynamicViT's recipe
            frozen.requires_grad_(False)
    digest = config_hash(
        params.data,
        params.models.student,
        spec.to_meta(),
        init_meta.get("config_hash", ""),
        cfg.train,
        cfg.kd,
        method_cfg,
        teacher_hash,
        params.seed,
        data.meta["sources"],
        data.meta["counts"],
    )
    history = fit(
        model,
        data,
        cfg.train,
        objective,
        runtime,
        params.seed,
        root / "checkpoints" / "prune" / variant.name,
        digest,
        name=f"prune@{variant.name}",
        img_size=params.models.student.img_size,
        section="prune.train",
        backbone_lr=backbone_lr,
    )
    size = params.models.student.img_size
    example = torch.randn(1, data.in_chans, size, size, device=runtime.device)
    tokens = model.eval().forward_tokens(example, collect_block_tokens=True).block_tokens
    macs, full_macs = gmacs(model, example), gmacs(unpruned, example)
    last = history[-1]
    metrics: dict[str, Any] = {
        "val_top1": last["val_top1"],
        "init_val_top1": init_meta.get("val_top1"),
        "train_loss": last["train_loss"],
        "epochs": len(history),
        "train_images": len(data.splits["train"]),
        "train_img_per_s": sum(r["img_per_s"] for r in history) / len(history),
        "gmacs": macs,
        "gmacs_unpruned": full_macs,
        "gmacs_ratio": macs / full_macs,
        "final_tokens": tokens[-1].shape[1],
        "wall_seconds": time.perf_counter() - started,
    }
    if runtime.is_main:
        meta = {
            **model_meta(params, data, "student"),
            "stage": f"prune@{variant.name}",
            "method": variant.method,
            "init": variant.init,
            "keep_rate": variant.keep_rate,
            "pruning": spec.to_meta(),
            "tokens_per_block": [t.shape[1] for t in tokens],
            "config_hash": digest,
            "val_top1": last["val_top1"],
        }
        save_model(out_dir, model, meta)
        atomic.write_text(out_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
        atomic.write_json(out_dir / "metrics.json", metrics)
    return metrics
