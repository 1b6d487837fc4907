"""DVC stage `teacher`: supervised training of the teacher preset on the prepared data -> models/teacher/.

It starts from `teacher.init`: scratch, or (the cpu profile) claim C's MAE teacher
models/distill_teacher, so that the teacher is pre-trained and then fine-tuned, as the teachers of
the papers are; a from-scratch teacher of a few epochs is weaker than an MAE-initialised student.
With `teacher.epochs` 0 it is not trained: the teacher from `teacher.init` (e.g. pretrained weights
already fine-tuned on this data) is measured on the validation split and saved as it is.
It writes the weights, meta.json, history.csv (per epoch; epoch 0 alone for an untrained teacher)
and metrics.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch

from maskprune import atomic
from maskprune.checkpoint import WEIGHTS_FILE, config_hash, model_meta, pretrained_digest, save_model
from maskprune.cli import run_stage
from maskprune.config import Params
from maskprune.data.loader import Normalizer
from maskprune.data.storage import PreparedData, load_prepared
from maskprune.launch import checkpoint_root
from maskprune.layout import TEACHER_DIR, prepared_dir
from maskprune.measure import top1
from maskprune.models.loading import init_teacher, normalizer_for
from maskprune.objectives.classification import ClassificationObjective
from maskprune.runtime import Runtime, seed_everything
from maskprune.tracking.runs import StageRecord
from maskprune.trainer import fit


def as_is(
    model: torch.nn.Module, data: PreparedData, normalize: Normalizer, runtime: Runtime, batch_size: int
) -> list[dict[str, float]]:
    """The history of a teacher used as it is (`teacher.epochs` 0): epoch 0, its validation top-1."""
    val = data.splits["val"].to(runtime.device)
    return [{"epoch": 0, "val_top1": top1(model.to(runtime.device), val, normalize, runtime, max(256, batch_size))}]


def compute(params: Params, root: Path, runtime: Runtime) -> None:
    """Train the teacher (or take it as it is); write weights, meta, history and metrics into models/teacher/."""
    started = time.perf_counter()
    cfg = params.teacher
    seed_everything(cfg.seed)
    data = load_prepared(root / prepared_dir(params.data.name), workers=runtime.loader_workers)
    spec = params.models.teacher
    normalize = normalizer_for(spec, data.meta, runtime.device)
    model, init = init_teacher(params, data, root)
    digest = config_hash(
        params.data, spec, cfg, init, pretrained_digest(spec), data.meta["sources"], data.meta["counts"]
    )
    if not cfg.epochs:
        history = as_is(model, data, normalize, runtime, cfg.batch_size)
    else:
        history = fit(
            model,
            data,
            cfg,
            ClassificationObjective(cfg.label_smoothing),
            runtime,
            cfg.seed,
            checkpoint_root(params.runtime, root) / "teacher",
            digest,
            name="teacher",
            normalize=normalize,
        )
    trained = [r for r in history if r["epoch"]]
    last = history[-1]
    metrics = {
        "val_top1": last["val_top1"],
        "epochs": len(trained),
        **(
            {"train_loss": last["train_loss"], "train_img_per_s": sum(r["img_per_s"] for r in trained) / len(trained)}
            if trained
            else {}
        ),
        "train_seconds": sum(r["seconds"] for r in trained),  # all epochs, also across a resume
        "wall_seconds": time.perf_counter() - started,  # this invocation
    }
    if runtime.is_main:
        out = root / TEACHER_DIR
        save_model(
            out,
            model,
            {
                **model_meta(params, data, "teacher"),
                "seed": cfg.seed,
                "stage": "teacher",
                "config_hash": digest,
                "val_top1": last["val_top1"],
                **init,
            },
        )
        atomic.write_text(out / "history.csv", pd.DataFrame(history).to_csv(index=False))
        atomic.write_json(out / "metrics.json", metrics)
        print(f"teacher: val_top1 {metrics['val_top1']:.4f} in {metrics['wall_seconds']:.0f}s -> {TEACHER_DIR}")


def record(params: Params, root: Path) -> StageRecord:
    out = root / TEACHER_DIR
    return StageRecord(
        stage="teacher",
        params={
            "data": {"name": params.data.name},
            "models": {"teacher": params.models.teacher.model_dump()},
            "teacher": params.teacher.model_dump(),
            "runtime": params.runtime.model_dump(),
        },
        metrics=json.loads((out / "metrics.json").read_text()),
        history=pd.read_csv(out / "history.csv").to_dict("records"),
        artifacts=[out / "metrics.json", out / "history.csv", out / "meta.json"],
        model_weights=out / WEIGHTS_FILE,
    )


def batch_sizes(params: Params, variant: None) -> dict[str, int]:
    """The global batch the teacher trains with (none for a teacher used as it is)."""
    return {"teacher.batch_size": params.teacher.batch_size} if params.teacher.epochs else {}


if __name__ == "__main__":
    run_stage("teacher", compute, record, batch_sizes=batch_sizes)
