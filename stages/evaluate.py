"""DVC stage `evaluate`: measure every model under models/ -> metrics/evaluate.json, plots/evaluate/."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from maskprune.config import Params
from maskprune.evaluate import evaluate_models
from maskprune.runtime import Runtime
from maskprune.stage import run_stage
from maskprune.tracking import StageRecord, flatten

METRICS = Path("metrics") / "evaluate.json"
PLOTS = Path("plots") / "evaluate"


def compute(params: Params, root: Path, runtime: Runtime) -> None:
    report = evaluate_models(params, root, runtime, log=print if runtime.is_main else lambda _: None)
    if runtime.is_main:
        table = pd.DataFrame(report["pruning"]).set_index(["method", "keep_rate"])
        print(f"evaluate: pruned test top-1 by init\n{table.to_string(float_format='{:.4f}'.format)}")
        table = pd.DataFrame(report["task_agnostic"]).set_index(["student", "target"])
        print(f"evaluate: task-agnostic KD students\n{table.to_string(float_format='{:.4f}'.format)}")


def pruning_metrics(rows: list[dict]) -> dict[str, float]:
    """'pruning.<method>.keep<rate>.<column>' for every number of the pruning table."""
    return {f"pruning.{row['method']}.keep{row['keep_rate']:g}.{key}": value for row in rows
            for key, value in row.items() if key not in ("method", "keep_rate")}  # fmt: skip


def record(params: Params, root: Path) -> StageRecord:
    report = json.loads((root / METRICS).read_text())
    metrics = {k: v for k, v in flatten(report["models"]).items() if isinstance(v, (int, float))}
    metrics.update(pruning_metrics(report["pruning"]))
    metrics.update({f"task_agnostic.{row['student']}.{row['target']}.{key}": value for row in report["task_agnostic"]
                    for key, value in row.items() if key not in ("student", "target")})  # fmt: skip
    return StageRecord(
        stage="evaluate",
        params={"seed": params.seed, "evaluate": params.evaluate.model_dump()},
        metrics=metrics,
        artifacts=[root / METRICS, root / PLOTS],
    )


if __name__ == "__main__":
    run_stage("evaluate", compute, record)
