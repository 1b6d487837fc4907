"""DVC stage `prepare`: raw dataset -> data/prepared/<name>/ (uint8 arrays + meta.json)."""

from __future__ import annotations

import json
from pathlib import Path

from maskprune.config import Params
from maskprune.data.prepare import prepare_dataset
from maskprune.runtime import Runtime
from maskprune.stage import run_stage
from maskprune.tracking import StageRecord


def compute(params: Params, root: Path, runtime: Runtime) -> None:
    meta = prepare_dataset(params.data, params.data.seed, root / "data" / "prepared")
    print(f"prepare: {meta['name']} {meta['counts']} -> data/prepared/{meta['name']}")


def record(params: Params, root: Path) -> StageRecord:
    meta_path = root / "data" / "prepared" / params.data.name / "meta.json"
    meta = json.loads(meta_path.read_text())
    return StageRecord(
        stage="prepare",
        params={"data": params.data.model_dump()},
        metrics={f"count_{split}": n for split, n in meta["counts"].items()},
        artifacts=[meta_path],
    )


if __name__ == "__main__":
    run_stage("prepare", compute, record)
