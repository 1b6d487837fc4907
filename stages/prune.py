"""DVC stage `prune@<method>-<init>-<keep>`: a token-pruned student -> models/prune/<variant>/."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from maskprune.config import Params
from maskprune.prune import PruneVariant, train_prune
from maskprune.runtime import Runtime
from maskprune.stage import run_stage
from maskprune.tracking import StageRecord

OUT = Path("models") / "prune"


def compute(params: Params, root: Path, runtime: Runtime, variant: str) -> None:
    chosen = PruneVariant.parse(variant)
    metrics = train_prune(params, chosen, root, root / OUT / chosen.name, runtime)
    if runtime.is_main:
        print(
            f"prune@{chosen.name}: val_top1 {metrics['val_top1']:.4f} (init {metrics['init_val_top1']:.4f}) "
            f"{metrics['gmacs']:.4f} GMACs ({metrics['gmacs_ratio']:.2f}x of unpruned) "
            f"in {metrics['wall_seconds']:.0f}s -> {OUT / chosen.name}"
        )


def record(params: Params, root: Path, variant: str) -> StageRecord:
    chosen = PruneVariant.parse(variant)
    out = root / OUT / chosen.name
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
                "train": cfg.train.model_dump(),
                "kd": cfg.kd.model_dump(),
                chosen.method: getattr(cfg, chosen.method).model_dump(),
            },
            "runtime": params.runtime.model_dump(),
        },
        metrics=json.loads((out / "metrics.json").read_text()),
        history=pd.read_csv(out / "history.csv").to_dict("records"),
        artifacts=[out / "metrics.json", out / "history.csv", out / "meta.json", out / "model.safetensors"],
        tags={"method": chosen.method, "init": chosen.init, "keep_rate": f"{chosen.keep_rate:g}"},
    )


if __name__ == "__main__":
    run_stage("prune", compute, record, variants=PruneVariant.parse)
