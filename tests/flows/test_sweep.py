"""The MaskedKD sweep flow: DVC experiments in temporary copies, one MLflow parent, a results table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from maskprune.config import MTOSection
from maskprune.errors import MaskpruneError
from maskprune.profile import profile_params
from tests.conftest import REPO, copy_run, run

pytestmark = pytest.mark.integration


def test_combinations_run_keep_one_once_and_refuse_bad_input() -> None:
    from flows.sweep import combinations, experiment_name, experiment_sets

    assert combinations([1.0, 0.5], ["student_attn", "random"]) == [
        (1.0, "none"),
        (0.5, "student_attn"),
        (0.5, "random"),
    ]
    assert experiment_name("s1", 0.25, "student_attn") == "s1-studentattn-k025"
    assert experiment_sets(0.5, "random", ["finetune.train.train_limit=100"]) == [
        "finetune.masked_kd.teacher_keep=0.5",
        "finetune.masked_kd.criterion=random",
        "finetune.train.train_limit=100",
    ]
    with pytest.raises(MaskpruneError, match="unknown criterion 'cls'"):
        combinations([0.5], ["cls"])
    with pytest.raises(MaskpruneError, match=r"keep ratios in \(0, 1\]"):
        combinations([1.5], ["random"])


def test_queued_experiments_share_the_cpu_threads() -> None:
    from flows.experiments import threads_per_job

    assert threads_per_job({}, jobs=2, cpus=2)["OMP_NUM_THREADS"] == "1"
    assert threads_per_job({}, jobs=3, cpus=16)["OMP_NUM_THREADS"] == "5"
    assert threads_per_job({}, jobs=4, cpus=2)["OMP_NUM_THREADS"] == "1"  # never 0
    assert threads_per_job({"OMP_NUM_THREADS": "3", "A": "b"}, jobs=2, cpus=2) == {
        "OMP_NUM_THREADS": "3",
        "A": "b",
    }


def test_jobs_option_takes_a_positive_count(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from flows.experiments import add_experiment_options

    parser = argparse.ArgumentParser(prog="sweep")
    add_experiment_options(parser, sets_help="override")
    args = parser.parse_args(["--jobs", "2", "--set", "a=1"])
    assert (args.jobs, args.sets) == (2, ["a=1"])
    assert parser.parse_args([]).jobs == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["--jobs", "0"])
    assert "argument --jobs: must be at least 1, got 0" in capsys.readouterr().err


def test_sweep_runs_experiments_and_lines_them_up(
    prefect_harness: None, smoke_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.sweep import maskedkd_sweep

    monkeypatch.chdir(smoke_repo)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    params_before = (smoke_repo / "params.yaml").read_text()
    rows = maskedkd_sweep(keep_ratios=[1.0, 0.25], criteria=["student_attn"], sets=["finetune.train.train_limit=512"])
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
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted(c.data.tags["dvc.exp_name"] for c in children) == sorted(r["experiment"] for r in rows)
    assert {c.data.params["finetune.masked_kd.teacher_keep"] for c in children} == {"1.0", "0.25"}


def test_a_queued_experiment_logs_its_stages_to_the_users_store(smoke_run: Path, tmp_path: Path) -> None:
    """Plain DVC, no flow: `dvc exp run --queue` then `--run-all` runs the stages in a copy under
    .dvc/tmp/exps/; their runs land in the repository's own store, tagged with the experiment's name."""
    repo = copy_run(smoke_run, tmp_path / "repo")  # NOTE: without the shared run's MLflow store
    run(["dvc", "exp", "run", "--queue", "--name", "tighter", "--set-param", "report.confidence=0.9"], repo)
    run(["dvc", "exp", "run", "--run-all"], repo)
    assert "tighter" in run(["dvc", "exp", "show", "--csv"], repo).stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(profile_params("smoke", REPO).tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.`dvc.exp_name` = 'tighter'")
    assert [r.data.tags["maskprune.stage"] for r in runs] == ["report"]  # the one stage the change reruns
    assert runs[0].data.params["report.confidence"] == "0.9"
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))


def test_mto_ablation_subsets_and_bad_input() -> None:
    from flows.mto_ablation import loss_subsets, subset_sets

    assert len(loss_subsets()) == 7 and loss_subsets()[-1] == ("spa", "e", "r")
    assert loss_subsets(["r+e", "spa"]) == [("e", "r"), ("spa",)]
    weights = MTOSection(spa_weight=0.001, e_weight=0.1, r_weight=0.2, rank_direction="falling")
    assert subset_sets(("e", "r"), weights, ["x=1"]) == [
        "pretrain.mto.spa_weight=0.0",
        "pretrain.mto.e_weight=0.1",
        "pretrain.mto.r_weight=0.2",
        "x=1",
    ]
    with pytest.raises(MaskpruneError, match="give subsets of spa, e, r"):
        loss_subsets(["spa+x"])
    with pytest.raises(MaskpruneError, match="pretrain.mto.e_weight is 0"):
        subset_sets(("e",), MTOSection(spa_weight=0.001, e_weight=0.0, r_weight=0.1, rank_direction="falling"), [])


def test_mto_ablation_runs_the_baseline_and_each_subset_as_experiments(
    prefect_harness: None, smoke_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.mto_ablation import mto_ablation

    monkeypatch.chdir(smoke_repo)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    # NOTE: SimMIM, which the smoke pipeline leaves out: its baseline and an MTO variant through DVC
    rows = mto_ablation(objective="simmim", sets=["pretrain.train.train_limit=256"], losses=["e+r"])
    assert [r["losses"] for r in rows] == ["none", "L_e+L_r"]
    ablated = rows[1]
    mto = profile_params("smoke", smoke_repo).pretrain.mto
    assert ablated["spa_weight"] == 0.0 and mto.spa_weight > 0  # the subset leaves L_spa out
    assert (ablated["e_weight"], ablated["r_weight"]) == (mto.e_weight, mto.r_weight)
    # SimMIM's mask tokens are in the encoder: H of its input and of each of its 6 blocks
    assert {"rauc", "epochs_to_baseline_final", "minus_baseline", "rec_loss", "h_0", "h_6"} <= set(ablated)
    assert "h_7" not in ablated
    assert ablated["minus_baseline"] == pytest.approx(ablated["probe_top1"] - rows[0]["probe_top1"])
    sweep = rows[0]["experiment"].removesuffix("-baseline")
    assert (smoke_repo / "reports" / "sweeps" / f"{sweep}.csv").is_file()
