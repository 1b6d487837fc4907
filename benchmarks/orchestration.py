"""Each stage's wall time with and without the orchestration layer (DVC + MLflow, and Prefect).

In a fresh copy of the workspace (a profile, `smoke` by default), in the pipeline's order:
  1. bare: `python -m stages.<stage>` with tracking off (the computation alone, plus process start);
  2. DVC + MLflow: `dvc repro --force --single-item <stage>` with tracking on (hashing, lock
     file, the stage's MLflow run and artifacts);
  3. Prefect: the whole pipeline as the Prefect flow (`python -m flows.pipeline --force`, with its
     ephemeral server), which runs every stage through DVC again.
Training checkpoints are removed before every run, so each one computes from scratch. The
overhead is what 2 and 3 add to 1. Needs dvc, mlflow and prefect; without them the part reports
why it was skipped.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from maskprune.workspace import copy_workspace

ORCHESTRATION = ("dvc", "mlflow", "prefect")
WARM_PREFECT = "from prefect import flow\n@flow\ndef warm() -> None: ...\nwarm()"


def missing_tools() -> list[str]:
    return [name for name in ORCHESTRATION if importlib.util.find_spec(name) is None]


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of a command; a failure raises with the end of its output."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(done.stdout + done.stderr)[-1500:]}")
    return seconds


def set_tracking(repo: Path, enabled: bool) -> None:
    """tracking.enabled in params.yaml (no stage lists it as a param, so DVC ignores the change)."""
    params_file = repo / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["tracking"]["enabled"] = enabled
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def stage_command(stage: str) -> list[str]:
    name, _, variant = stage.partition("@")
    return [sys.executable, "-m", f"stages.{name}", *([variant] if variant else [])]


def overhead_summary(rows: list[dict[str, Any]], prefect_total: float) -> dict[str, float]:
    """Totals and overhead fractions from per-stage `bare_s` / `dvc_mlflow_s` and the flow's total."""
    bare = sum(r["bare_s"] for r in rows)
    dvc = sum(r["dvc_mlflow_s"] for r in rows)
    return {
        "bare_total_s": bare,
        "dvc_mlflow_total_s": dvc,
        "prefect_total_s": prefect_total,
        "dvc_mlflow_overhead_s": dvc - bare,
        "prefect_overhead_s": prefect_total - dvc,
        "overhead_fraction": (prefect_total - bare) / prefect_total,
    }


def run(root: Path, profile: str = "smoke") -> dict[str, Any]:
    missing = missing_tools()
    if missing:
        return {"skipped": f"{', '.join(missing)} not installed (the orchestration layer is needed to measure it)"}
    from flows.pipeline import stage_order

    env = {
        **os.environ,
        "PYTHONPATH": "src",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory(prefix="maskprune-orchestration-") as tmp:
        repo = copy_workspace(root, Path(tmp), profile)
        stages = stage_order(repo)
        rows = []
        set_tracking(repo, False)
        for stage in stages:
            shutil.rmtree(repo / "checkpoints", ignore_errors=True)
            rows.append({"stage": stage, "bare_s": timed(stage_command(stage), repo, env)})
        set_tracking(repo, True)
        for row in rows:
            shutil.rmtree(repo / "checkpoints", ignore_errors=True)
            row["dvc_mlflow_s"] = timed(
                [
                    str(Path(sys.executable).with_name("dvc")),
                    "repro",
                    "--force",
                    "--single-item",
                    row["stage"],
                ],
                repo,
                env,
            )
            row["overhead_s"] = row["dvc_mlflow_s"] - row["bare_s"]
        shutil.rmtree(repo / "checkpoints", ignore_errors=True)
        flow_env = {**env, "PREFECT_HOME": str(Path(tmp) / "prefect-home")}
        flow_env.pop("PREFECT_API_URL", None)
        timed([sys.executable, "-c", WARM_PREFECT], repo, flow_env)  # one-time database migrations, untimed
        prefect_total = timed([sys.executable, "-m", "flows.pipeline", "--force"], repo, flow_env)
    return {
        "profile": profile,
        "stages": rows,
        **overhead_summary(rows, prefect_total),
        "note": "the Prefect total includes starting its ephemeral server (warm PREFECT_HOME) once",
    }
