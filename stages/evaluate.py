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
        table = pd.DataFrame(report["mto"]).drop(columns=["baseline_h", "mto_h"]).set_index("objective")
        print(f"evaluate: pre-training with vs without MTO\n{table.T.to_string(float_format='{:.4f}'.format)}")


def table_metrics(prefix: str, rows: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    """'<prefix>.<key values...>.<column>' for every number of a table (None and lists skipped)."""
    return {
        ".".join([prefix, *(str(row[k]) for k in keys), column]): value
        for row in rows
        for column, value in row.items()
        if column not in keys and isinstance(value, (int, float))
    }


def record(params: Params, root: Path) -> StageRecord:
    report = json.loads((root / METRICS).read_text())
    metrics = {k: v for k, v in flatten(report["models"]).items() if isinstance(v, (int, float))}
    pruning = [{**row, "keep_rate": f"keep{row['keep_rate']:g}"} for row in report["pruning"]]
    metrics.update(table_metrics("pruning", pruning, ("method", "keep_rate")))
    metrics.update(table_metrics("task_agnostic", report["task_agnostic"], ("student", "target")))
    metrics.update(table_metrics("mto", report["mto"], ("objective",)))
    return StageRecord(
        stage="evaluate",
        params={"seed": params.seed, "evaluate": params.evaluate.model_dump()},
        metrics=metrics,
        artifacts=[root / METRICS, root / PLOTS],
    )


if __name__ == "__main__":
    run_stage("evaluate", compute, record)
