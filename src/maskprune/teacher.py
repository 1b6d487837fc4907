"""Supervised training of the teacher preset on the prepared data."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from maskprune import atomic
from maskprune.checkpoint import config_hash, model_meta, save_model
from maskprune.config import Params
from maskprune.data.loader import load_prepared
from maskprune.models.vit import build_model
from maskprune.runtime import Runtime, seed_everything
from maskprune.train import ClassificationObjective, fit


def train_teacher(params: Params, root: Path, out_dir: Path, runtime: Runtime) -> dict[str, float]:
    """Train the teacher; write weights, meta, history CSV and metrics JSON into `out_dir`."""
    started = time.perf_counter()
    seed = params.teacher.seed
    seed_everything(seed)
    data = load_prepared(root / "data" / "prepared" / params.data.name)
    spec = params.models.teacher
    model = build_model(spec, num_classes=data.num_classes, in_chans=data.in_chans)
    digest = config_hash(params.data, spec, params.teacher, data.meta["sources"], data.meta["counts"])
    history = fit(
        model,
        data,
        params.teacher,
        ClassificationObjective(params.teacher.label_smoothing),
        runtime,
        seed,
        root / "checkpoints" / "teacher",
        digest,
        name="teacher",
        img_size=spec.img_size,
    )
    last = history[-1]
    metrics = {
        "val_top1": last["val_top1"],
        "train_loss": last["train_loss"],
        "epochs": len(history),
        "train_img_per_s": sum(r["img_per_s"] for r in history) / len(history),
        "train_seconds": sum(r["seconds"] for r in history),  # all epochs, also across a resume
        "wall_seconds": time.perf_counter() - started,  # this invocation
    }
    if runtime.is_main:
        save_model(
            out_dir,
            model,
            {
                **model_meta(params, data, "teacher"),
                "seed": seed,
                "stage": "teacher",
                "config_hash": digest,
                "val_top1": last["val_top1"],
            },
        )
        atomic.write_text(out_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
        atomic.write_json(out_dir / "metrics.json", metrics)
    return metrics
