"""The pipeline as a Prefect flow under prefect_test_harness, on a fresh smoke-profile copy."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import NARROW_STAGES, copy_repo, copy_run, narrow

pytestmark = pytest.mark.integration
# NOTE: the flow runs a narrower matrix (tests.conftest.narrow) and only its first stage: what is under
# test is the orchestration, not the stages (tests/test_dvc_repro.py runs them all; ops/test_prefect.py
# up to the teacher).
STAGES = ("prepare",)


def test_flow_runs_stages_through_dvc_and_nests_mlflow_runs(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import pipeline
    from maskprune.dvc_yaml import stage_order

    repo = copy_repo(tmp_path)
    narrow(repo)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    order = stage_order(repo)
    assert sorted(order) == sorted(NARROW_STAGES) and order[0] == "prepare" and order[-2:] == ["evaluate", "report"]
    assert order.index("pretrain@mae-mto") < order.index("finetune@full") < order.index("prune@evit-masked-0.5")
    assert stage_order(repo, "teacher") == ["prepare", "distill_teacher", "teacher"]
    # the no-KD arm needs no teacher
    assert sorted(stage_order(repo, "finetune@full")) == [
        "finetune@full",
        "prepare",
        "pretrain@mae-baseline",
        "pretrain@mae-mto",
    ]

    first = pipeline(stage="prepare")
    assert first == {stage: "ran" for stage in STAGES}
    assert (repo / "data" / "prepared" / "fashion_mnist" / "meta.json").is_file()
    second = pipeline(stage="prepare")
    assert second == {stage: "skipped" for stage in STAGES}

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("maskprune")
    parents = client.search_runs(
        [experiment.experiment_id],
        "tags.`maskprune.source` = 'prefect'",
        order_by=["attributes.start_time ASC"],
    )
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the second run had nothing to do
    assert parents[0].data.tags["prefect.flow_run_id"]
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted(run.data.tags["maskprune.stage"] for run in children) == sorted(STAGES)
    assert {run.data.tags["prefect.flow_run_id"] for run in children} == {parents[0].data.tags["prefect.flow_run_id"]}


def test_skipped_stages_end_skipped_along_the_stage_graph(
    prefect_harness: None, smoke_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the reproduced smoke run nothing changed: every task ends Skipped (of type Completed) and
    waits for the tasks of the stages it depends on, the edges of Prefect's graph; two stages at a
    time (the two pre-trainings can run side by side)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.pipeline import pipeline

    repo = copy_run(smoke_run, tmp_path / "repo")  # NOTE: without the shared run's MLflow store
    monkeypatch.chdir(repo)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    state = pipeline(stage="finetune@full", jobs=2, return_state=True)
    assert state.result() == dict.fromkeys(
        ["prepare", "pretrain@mae-baseline", "pretrain@mae-mto", "finetune@full"], "skipped"
    )
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    by_stage = {run.name.removeprefix("dvc repro "): run for run in runs}
    assert {stage: run.state.name for stage, run in by_stage.items()} == dict.fromkeys(by_stage, "Skipped")
    assert {run.state.type.value for run in runs} == {"COMPLETED"}
    upstream = {
        stage: sorted(
            next(name for name, other in by_stage.items() if other.id == edge.id)
            for edge in run.task_inputs.get("wait_for", [])
        )
        for stage, run in by_stage.items()
    }
    assert upstream == {
        "prepare": [],
        "pretrain@mae-baseline": ["prepare"],
        "pretrain@mae-mto": ["prepare"],
        "finetune@full": ["prepare", "pretrain@mae-baseline", "pretrain@mae-mto"],
    }


def test_training_stages_share_the_cores_out_among_jobs_evaluate_keeps_them() -> None:
    from flows.pipeline import stage_env

    env = {"PATH": "/bin"}
    cores = os.cpu_count() or 1
    assert stage_env("pretrain@mae-mto", env, 2) == {"PATH": "/bin", "OMP_NUM_THREADS": str(max(1, cores // 2))}
    assert stage_env("teacher", env, 1) == env
    for stage in ("prepare", "evaluate", "report"):
        assert stage_env(stage, env, 2) == env
    assert stage_env("finetune@full", {**env, "OMP_NUM_THREADS": "3"}, 2)["OMP_NUM_THREADS"] == "3"  # set wins


def test_serve_refuses_without_a_prefect_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(SystemExit, match="--serve needs a Prefect server: run `prefect server start`"):
        main(["--serve", "--cron", "0 3 * * *"])
