"""The MaskedKD sweep flow: DVC experiments in temporary copies, one MLflow parent, a results table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from maskprune.errors import MaskpruneError
from tests.conftest import run

pytestmark = pytest.mark.integration


def test_combinations_run_keep_one_once_and_refuse_bad_input() -> None:
    from flows.sweep import combinations, experiment_name, experiment_sets

    assert combinations([1.0, 0.5], ["student_attn", "random"]) == [
        (1.0, "none"), (0.5, "student_attn"), (0.5, "random")]  # fmt: skip
    assert experiment_name("s1", 0.25, "student_attn") == "s1-studentattn-k025"
    assert experiment_sets(0.5, "random", ["finetune.train.train_limit=100"]) == [
        "finetune.masked_kd.teacher_keep=0.5", "finetune.masked_kd.criterion=random",
        "finetune.train.train_limit=100"]  # fmt: skip
    with pytest.raises(MaskpruneError, match="unknown criterion 'cls'"):
        combinations([0.5], ["cls"])
    with pytest.raises(MaskpruneError, match=r"keep ratios in \(0, 1\]"):
        combinations([1.5], ["random"])


def test_sweep_runs_experiments_and_lines_them_up(
    prefect_harness: None, smoke_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.sweep import maskedkd_sweep

    monkeypatch.chdir(smoke_repo)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    params_before = (smoke_repo / "params.yaml").read_text()
    rows = maskedkd_sweep(keep_ratios=[1.0, 0.25], criteria=["student_attn"],
                          sets=["finetune.train.train_limit=512"])  # fmt: skip
    assert [(r["teacher_keep"], r["criterion"]) for r in rows] == [(1.0, "none"), (0.25, "student_attn")]
    full, quarter = rows
    assert full["teacher_gmacs_ratio"] == pytest.approx(1.0)
    assert quarter["teacher_gmacs_ratio"] == pytest.approx(13 / 50, rel=0.1)  # [CLS] + 12 of 49 patches
    assert quarter["train_tflops"] < full["train_tflops"]
    assert all(0.0 <= r["val_top1"] <= 1.0 and r["teacher_throughput_ratio"] > 0 for r in rows)
    assert (smoke_repo / "params.yaml").read_text() == params_before  # the workspace is left alone

    sweep = rows[0]["experiment"].rsplit("-", 2)[0]
    table = pd.read_csv(smoke_repo / "reports" / "sweeps" / f"{sweep}.csv")
    assert list(table["experiment"]) == [r["experiment"] for r in rows]
    shown = run(["dvc", "exp", "show", "--csv"], smoke_repo).stdout
    assert all(r["experiment"] in shown for r in rows)

    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("maskprune")
    parents = client.search_runs([experiment.experiment_id], "tags.`maskprune.source` = 'prefect sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")  # fmt: skip
    assert sorted(c.data.tags["dvc.exp_name"] for c in children) == sorted(r["experiment"] for r in rows)
    assert {c.data.params["finetune.masked_kd.teacher_keep"] for c in children} == {"1.0", "0.25"}
