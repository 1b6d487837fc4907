"""DVC stage `evaluate`: measure every model under models/ -> metrics/evaluate.json, plots/evaluate/."""

from __future__ import annotations

import json
from pathlib import Path

from maskprune.config import Params
from maskprune.evaluate import evaluate_models
from maskprune.runtime import Runtime
from maskprune.stage import run_stage
from maskprune.tracking import StageRecord, flatten

METRICS = Path("metrics") / "evaluate.json"
PLOTS = Path("plots") / "evaluate"


def compute(params: Params, root: Path, runtime: Runtime) -> None:
    report = evaluate_models(params, root, runtime)
    if not runtime.is_main:
        return
    for name, entry in report["models"].items():
        print(f"evaluate: {name} top1 {entry['top1']:.4f} {entry['gmacs']:.4f} GMACs "
              f"{entry['img_per_s']:.0f} img/s")  # fmt: skip


def record(params: Params, root: Path) -> StageRecord:
    report = json.loads((root / METRICS).read_text())
    metrics = {k: v for k, v in flatten(report["models"]).items() if isinstance(v, (int, float))}
    return StageRecord(
        stage="evaluate",
        params={"seed": params.seed, "evaluate": params.evaluate.model_dump()},
        metrics=metrics,
        artifacts=[root / METRICS, root / PLOTS],
    )


if __name__ == "__main__":
    run_stage("evaluate", compute, record)
