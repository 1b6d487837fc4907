"""DVC stage `teacher`: supervised training of the teacher preset on the prepared data -> models/teacher/.

It starts from `teacher.init`: scratch, or (the cpu profile) claim C's MAE teacher
models/distill_teacher, so that the teacher is pre-trained and then fine-tuned, as the teachers of
the papers are; a from-scratch teacher of a few epochs is weaker than an MAE-initialised student.
It writes the weights, meta.json, history.csv (per epoch) and metrics.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from maskprune import atomic
from maskprune.checkpoint import config_hash, model_meta, save_model
from maskprune.cli import run_stage
from maskprune.config import Params
from maskprune.data.storage import load_prepared
from maskprune.layout import CHECKPOINTS_DIR, TEACHER_DIR, prepared_dir
from maskprune.models.loading import init_teacher
from maskprune.objectives.classification import ClassificationObjective
from maskprune.runtime import Runtime, seed_everything
from maskprune.tracking.runs import StageRecord
from maskprune.trainer import fit


def compute(params: Params, root: Path, runtime: Runtime) -> None:
    """Train the teacher; write weights, meta, history CSV and metrics JSON into models/teacher/."""
    started = time.perf_counter()
    seed = params.teacher.seed
    seed_everything(seed)
    data = load_prepared(root / prepared_dir(params.data.name), workers=runtime.loader_workers)
    spec = params.models.teacher
    model, init = init_teacher(params, data, root)
    digest = config_hash(params.data, spec, params.teacher, init, data.meta["sources"], data.meta["counts"])
    history = fit(
        model,
        data,
        params.teacher,
        ClassificationObjective(params.teacher.label_smoothing),
        runtime,
        seed,
        root / CHECKPOINTS_DIR / "teacher",
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
        out = root / TEACHER_DIR
        save_model(
            out,
            model,
            {
                **model_meta(params, data, "teacher"),
                "seed": seed,
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
        artifacts=[out / "metrics.json", out / "history.csv", out / "meta.json", out / "model.safetensors"],
    )


if __name__ == "__main__":
    run_stage("teacher", compute, record)
