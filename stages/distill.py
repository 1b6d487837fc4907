"""DVC stage `distill@<student>-<target>`: task-agnostic KD -> models/distill/<variant>/{probe,finetune}/."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from maskprune.config import Params
from maskprune.runtime import Runtime
from maskprune.stage import run_stage
from maskprune.task_agnostic import DistillVariant, train_task_agnostic
from maskprune.tracking import StageRecord

OUT = Path("models") / "distill"


def compute(params: Params, root: Path, runtime: Runtime, variant: str) -> None:
    chosen = DistillVariant.parse(variant)
    metrics = train_task_agnostic(params, chosen, root, root / OUT / chosen.name, runtime)
    if runtime.is_main:
        print(
            f"distill@{chosen.name}: probe val_top1 {metrics['probe_val_top1']:.4f} finetune val_top1 "
            f"{metrics['finetune_val_top1']:.4f} {metrics['gmacs']:.4f} GMACs in {metrics['wall_seconds']:.0f}s "
            f"-> {OUT / chosen.name}"
        )


def record(params: Params, root: Path, variant: str) -> StageRecord:
    chosen = DistillVariant.parse(variant)
    out = root / OUT / chosen.name
    cfg = params.distill
    history = pd.read_csv(out / "history.csv")
    return StageRecord(
        stage=f"distill@{chosen.name}",
        params={
            "seed": params.seed,
            "data": {"name": params.data.name},
            "models": {"student": params.models.student.model_dump()},
            "distill": {
                "student": chosen.student,
                "target": chosen.target,
                "teacher": cfg.teacher,
                "keep_rate": cfg.keep_rate,
                "loss": cfg.loss,
                "train": cfg.train.model_dump(),
                "probe": cfg.probe.model_dump(),
                "finetune": cfg.finetune.model_dump(),
            },
            "runtime": params.runtime.model_dump(),
        },
        metrics=json.loads((out / "metrics.json").read_text()),
        history=history[history["phase"] == "distill"].drop(columns="phase").dropna(axis=1).to_dict("records"),
        artifacts=[out / "metrics.json", out / "history.csv", out / "probe", out / "finetune"],
        tags={"student": chosen.student, "target": chosen.target},
    )


if __name__ == "__main__":
    run_stage("distill", compute, record, variants=DistillVariant.parse)
