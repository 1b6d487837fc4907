"""DVC stage `prune@<method>-<init>-<keep>`: EViT or DynamicViT trained from a finetune variant at one keep rate.

`prune@<method>-<init>-<keep>` loads models/finetune/<init>/, turns it into the pruned model
(pruning at `prune.locations`), trains it with the method's loss and KD from models/teacher,
and writes models/prune/<method>-<init>-<keep>/. The model physically drops tokens at inference.
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
from maskprune.checkpoint import WEIGHTS_FILE, config_hash, model_meta, save_model
from maskprune.cli import run_stage
from maskprune.config import Params
from maskprune.data.storage import load_prepared
from maskprune.launch import checkpoint_root
from maskprune.layout import PruneVariant, prepared_dir
from maskprune.measure import gmacs
from maskprune.models.loading import load_init, load_teacher, normalizer_for
from maskprune.models.pruned import PruningSpec, make_pruned, pruning_blocks
from maskprune.models.vit import input_stats
from maskprune.objectives.masked_kd import TeacherView
from maskprune.objectives.token_pruning import DynamicViTObjective, EViTObjective
from maskprune.runtime import Runtime, seed_everything
from maskprune.tracking.runs import StageRecord
from maskprune.trainer import BackboneLR, fit


def compute(params: Params, root: Path, runtime: Runtime, variant: str) -> None:
    """Train the pruned model `variant`; write weights, meta, history and metrics."""
    chosen = PruneVariant.parse(variant)
    started = time.perf_counter()
    seed_everything(params.seed)
    cfg = params.prune
    train = cfg.train_for(chosen.method)
    data = load_prepared(root / prepared_dir(params.data.name), workers=runtime.loader_workers).limit_train(
        cfg.train.train_limit, params.seed
    )
    model, init_meta = load_init(params.models.student, chosen.init, root, runtime.device)
    unpruned = copy.deepcopy(model).eval().requires_grad_(False)
    spec = PruningSpec(
        chosen.method,
        chosen.keep_rate,
        pruning_blocks(len(model.blocks), cfg.locations),
        cfg.evit.fuse_token if chosen.method == "evit" else False,
    )
    model = make_pruned(model, spec)
    stats = input_stats(params.models.student, data.meta)
    teacher, teacher_hash = load_teacher(params.models.teacher, data, root, runtime.device, stats)
    view = TeacherView(teacher)
    backbone_lr = None
    if chosen.method == "evit":
        objective: Any = EViTObjective(model, view, cfg.kd, train.label_smoothing, cfg.evit.keep_warmup_epochs)
        method_cfg: Any = cfg.evit
    else:
        method_cfg = cfg.dynamicvit
        objective = DynamicViTObjective(
            chosen.keep_rate, view, unpruned, method_cfg, cfg.kd.temperature, train.label_smoothing
        )
        backbone_lr = BackboneLR(("score_predictor.",), method_cfg.backbone_lr_scale, method_cfg.freeze_epochs)
        for frozen in (model.cls_token, model.pos_embed):  # NOTE: frozen in DynamicViT's recipe
            frozen.requires_grad_(False)
    digest = config_hash(
        params.data,
        params.models.student,
        spec.to_meta(),
        init_meta.get("config_hash", ""),
        train,
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
        train,
        objective,
        runtime,
        params.seed,
        checkpoint_root(params.runtime, root) / "prune" / chosen.name,
        digest,
        name=f"prune@{chosen.name}",
        normalize=normalizer_for(params.models.student, data.meta, runtime.device),
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
        # DynamicViT: the fraction its last stage kept in the last training epoch, and the target
        **{key: last[key] for key in ("train_kept_fraction", "train_kept_target") if key in last},
        "wall_seconds": time.perf_counter() - started,
    }
    if runtime.is_main:
        out = root / chosen.folder
        meta = {
            **model_meta(params, data, "student"),
            "stage": f"prune@{chosen.name}",
            "method": chosen.method,
            "init": chosen.init,
            "keep_rate": chosen.keep_rate,
            "pruning": spec.to_meta(),
            "tokens_per_block": [t.shape[1] for t in tokens],
            "config_hash": digest,
            "val_top1": last["val_top1"],
        }
        save_model(out, model, meta)
        atomic.write_text(out / "history.csv", pd.DataFrame(history).to_csv(index=False))
        atomic.write_json(out / "metrics.json", metrics)
        print(
            f"prune@{chosen.name}: val_top1 {metrics['val_top1']:.4f} (init {metrics['init_val_top1']:.4f}) "
            f"{metrics['gmacs']:.4f} GMACs ({metrics['gmacs_ratio']:.2f}x of unpruned) "
            f"in {metrics['wall_seconds']:.0f}s -> {chosen.folder}"
        )


def record(params: Params, root: Path, variant: str) -> StageRecord:
    chosen = PruneVariant.parse(variant)
    out = root / chosen.folder
    cfg = params.prune
    return StageRecord(
        stage=f"prune@{chosen.name}",
        params={
            "seed": params.seed,
            "data": {"name": params.data.name},
            "models": {"student": params.models.student.model_dump()},
            "prune": {
                "method": chosen.method,
                "init": chosen.init,
                "keep_rate": chosen.keep_rate,
                "locations": cfg.locations,
                "train": cfg.train_for(chosen.method).model_dump(),
                "kd": cfg.kd.model_dump(),
                chosen.method: getattr(cfg, chosen.method).model_dump(),
            },
            "runtime": params.runtime.model_dump(),
        },
        metrics=json.loads((out / "metrics.json").read_text()),
        history=pd.read_csv(out / "history.csv").to_dict("records"),
        artifacts=[out / "metrics.json", out / "history.csv", out / "meta.json"],
        model_weights=out / WEIGHTS_FILE,
        tags={"method": chosen.method, "init": chosen.init, "keep_rate": f"{chosen.keep_rate:g}"},
    )


def batch_sizes(params: Params, variant: str) -> dict[str, int]:
    return {"prune.train.batch_size": params.prune.train.batch_size}


if __name__ == "__main__":
    run_stage("prune", compute, record, variants=PruneVariant.parse, batch_sizes=batch_sizes)
