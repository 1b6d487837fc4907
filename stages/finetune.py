"""DVC stage `finetune@<variant>`: fine-tune the student -> models/finetune/<variant>/."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from maskprune.config import Params
from maskprune.finetune import VARIANTS, train_finetune
from maskprune.runtime import Runtime
from maskprune.stage import run_stage
from maskprune.tracking import StageRecord

OUT = Path("models") / "finetune"


def compute(params: Params, root: Path, runtime: Runtime, variant: str) -> None:
    metrics = train_finetune(params, variant, root, root / OUT / variant, runtime)
    if runtime.is_main:
        teacher = (
            f" teacher {metrics['teacher_gmacs_per_image']:.4f} GMACs/img "
            f"({metrics['teacher_throughput_ratio']:.2f}x img/s of full)"
            if "teacher_gmacs_per_image" in metrics
            else ""
        )
        print(
            f"finetune@{variant}: val_top1 {metrics['val_top1']:.4f}{teacher} "
            f"{metrics['train_tflops']:.1f} TFLOPs in {metrics['wall_seconds']:.0f}s -> {OUT / variant}"
        )


def record(params: Params, root: Path, variant: str) -> StageRecord:
    out = root / OUT / variant
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
        artifacts=[out / "metrics.json", out / "history.csv", out / "meta.json", out / "model.safetensors"],
    )


if __name__ == "__main__":
    run_stage("finetune", compute, record, variants=VARIANTS)
