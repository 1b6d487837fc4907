"""DVC stage `teacher`: supervised training of the teacher -> models/teacher/."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from maskprune.config import Params
from maskprune.runtime import Runtime
from maskprune.stage import run_stage
from maskprune.teacher import train_teacher
from maskprune.tracking import StageRecord

OUT = Path("models") / "teacher"


def compute(params: Params, root: Path, runtime: Runtime) -> None:
    metrics = train_teacher(params, root, root / OUT, runtime)
    if runtime.is_main:
        print(f"teacher: val_top1 {metrics['val_top1']:.4f} in {metrics['wall_seconds']:.0f}s -> {OUT}")


def record(params: Params, root: Path) -> StageRecord:
    out = root / OUT
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
