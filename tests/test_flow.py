"""The pipeline as a Prefect flow under prefect_test_harness, on a fresh smoke-profile copy."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import copy_repo

pytestmark = pytest.mark.integration
# NOTE: a narrower matrix than the smoke pipeline's (test_pipeline runs all of it): one init, one student
NARROW = {"prune.inits": ["masked"], "distill.students": ["evit"], "distill.targets": ["cls"]}
STAGES = ("prepare", "teacher", "finetune@full", "finetune@masked", "finetune@masked_kd", "prune@evit-masked-0.5",
          "prune@dynamicvit-masked-0.5", "distill@evit-cls", "evaluate")  # fmt: skip


def narrow(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in NARROW.items():
        section, name = key.split(".")
        params[section][name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_flow_runs_stages_through_dvc_and_nests_mlflow_runs(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import pipeline, stage_order

    repo = copy_repo(tmp_path)
    narrow(repo)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    order = stage_order(repo)
    assert sorted(order) == sorted(STAGES) and order[:2] == ["prepare", "teacher"] and order[-1] == "evaluate"
    assert stage_order(repo, "teacher") == ["prepare", "teacher"]
    assert stage_order(repo, "finetune@masked") == ["prepare", "teacher", "finetune@masked"]

    first = pipeline()
    assert first == {stage: "ran" for stage in STAGES}
    assert (repo / "metrics" / "evaluate.json").is_file()
    second = pipeline()
    assert second == {stage: "skipped" for stage in STAGES}

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("maskprune")
    parents = client.search_runs([experiment.experiment_id], "tags.`maskprune.source` = 'prefect'",
                                 order_by=["attributes.start_time ASC"])  # fmt: skip
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert parents[0].data.tags["prefect.flow_run_id"]
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")  # fmt: skip
    assert sorted(run.data.tags["maskprune.stage"] for run in children) == sorted(STAGES)
    assert {run.data.tags["prefect.flow_run_id"] for run in children} == {parents[0].data.tags["prefect.flow_run_id"]}


def test_serve_refuses_without_a_prefect_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(SystemExit, match="--serve needs a Prefect server: run `prefect server start`"):
        main(["--serve", "--cron", "0 3 * * *"])
