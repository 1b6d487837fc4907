"""DVC stage `pretrain@<objective>-<loss>`: masked image modelling -> models/pretrain/<variant>/."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from maskprune.config import Params
from maskprune.pretrain import MIM_FILE, PretrainVariant, train_pretrain
from maskprune.runtime import Runtime
from maskprune.stage import run_stage
from maskprune.tracking import StageRecord

OUT = Path("models") / "pretrain"


def compute(params: Params, root: Path, runtime: Runtime, variant: str) -> None:
    chosen = PretrainVariant.parse(variant)
    metrics = train_pretrain(params, chosen, root, root / OUT / chosen.name, runtime)
    if runtime.is_main:
        print(
            f"pretrain@{chosen.name}: probe_top1 {metrics['probe_top1']:.4f} rec_loss {metrics['rec_loss']:.4f} "
            f"encoder {metrics['encoder_gmacs_ratio']:.2f}x GMACs of full in {metrics['wall_seconds']:.0f}s "
            f"-> {OUT / chosen.name}"
        )


def record(params: Params, root: Path, variant: str) -> StageRecord:
    chosen = PretrainVariant.parse(variant)
    out = root / OUT / chosen.name
    cfg = params.pretrain
    section = {
        "objective": chosen.objective,
        "loss": chosen.loss,
        "train": cfg.train.model_dump(),
        chosen.objective: getattr(cfg, chosen.objective).model_dump(),
        "probe": cfg.probe.model_dump(),
    }
    if chosen.loss == "mto":
        section["mto"] = cfg.mto.model_dump()
    return StageRecord(
        stage=f"pretrain@{chosen.name}",
        params={
            "seed": params.seed,
            "data": {"name": params.data.name},
            "models": {"student": params.models.student.model_dump()},
            "pretrain": section,
            "runtime": params.runtime.model_dump(),
        },
        metrics=json.loads((out / "metrics.json").read_text()),
        history=pd.read_csv(out / "history.csv").to_dict("records"),
        artifacts=[
            out / "metrics.json",
            out / "history.csv",
            out / "meta.json",
            out / "model.safetensors",
            out / MIM_FILE,
        ],
        tags={"objective": chosen.objective, "loss": chosen.loss},
    )


if __name__ == "__main__":
    run_stage("pretrain", compute, record, variants=PretrainVariant.parse)
