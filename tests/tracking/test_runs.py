"""MLflow tracking against a real `mlflow server` process on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from maskprune.config import TrackingSection
from maskprune.errors import MaskpruneError
from maskprune.tracking.runs import PARENT_ENV, StageRecord, Tracker, flatten, log_stage
from tests.conftest import subprocess_env
from tests.services import free_port, http_ok, service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root",
        str(root / "artifacts"),
    ]
    with service("mlflow server", cmd, http_ok(f"{uri}/health"), root / "server.log", env=subprocess_env()):
        yield uri


def record(stage: str, tmp_path: Path) -> StageRecord:
    artifact = tmp_path / f"{stage}.json"
    artifact.write_text('{"ok": true}')
    return StageRecord(
        stage=stage,
        params={"teacher": {"lr": 0.001, "epochs": 2}, "evaluate": {"drops": [0.0, 0.5]}},
        metrics={"val_top1": 0.87},
        history=[{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}],
        artifacts=[artifact],
    )


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": 1, "a.c": "[1, 2]", "d": "x"}


def test_stages_nest_under_one_parent_run_on_a_server(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TrackingSection(uri=mlflow_server, experiment="nesting")
    tracker = Tracker(cfg, tmp_path)
    parent = tracker.start_pipeline_run(source="test", flow_run_id="flow-123")
    monkeypatch.setenv(PARENT_ENV, parent)
    ids = [log_stage(record(stage, tmp_path), cfg, tmp_path) for stage in ("prepare", "teacher")]

    client = MlflowClient(tracking_uri=mlflow_server)
    children = client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(run.info.run_id for run in children) == sorted(ids)
    teacher = client.get_run(ids[1])
    assert teacher.data.tags["maskprune.stage"] == "teacher"
    assert teacher.data.params["teacher.lr"] == "0.001"
    assert teacher.data.params["evaluate.drops"] == "[0.0, 0.5]"
    assert teacher.data.metrics["val_top1"] == pytest.approx(0.87)
    steps = client.get_metric_history(ids[1], "train_loss")
    assert sorted((m.step, m.value) for m in steps) == [(1, 1.0), (2, 0.5)]
    assert [a.path for a in client.list_artifacts(ids[1])] == ["provenance.json", "teacher.json"]
    assert client.get_run(parent).data.tags["prefect.flow_run_id"] == "flow-123"
    assert teacher.info.status == "FINISHED"


def test_unreachable_server_fails_after_outputs_with_relog_hint(tmp_path: Path) -> None:
    cfg = TrackingSection(uri=f"http://127.0.0.1:{free_port()}", experiment="x")
    with pytest.raises(MaskpruneError) as info:
        log_stage(record("teacher", tmp_path), cfg, tmp_path)
    message = str(info.value)
    assert "unreachable" in message and "outputs are complete on disk" in message
    assert "python -m stages.teacher --log-only" in message and "tracking.required=false" in message


def test_unreachable_server_can_be_skipped_explicitly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = TrackingSection(uri=f"http://127.0.0.1:{free_port()}", required=False)
    assert log_stage(record("teacher", tmp_path), cfg, tmp_path) is None
    assert "maskprune: warning: tracking to" in capsys.readouterr().out


def test_disabled_tracking_logs_nothing(tmp_path: Path) -> None:
    assert log_stage(record("teacher", tmp_path), TrackingSection(enabled=False), tmp_path) is None
    assert not (tmp_path / "mlflow.db").exists()


def test_a_copy_in_dvc_tmp_logs_to_its_home_repositorys_store(tmp_path: Path) -> None:
    """`dvc exp run --temp` and queued experiments run stages in .dvc/tmp/exps/<tmp>/: their runs belong in
    the user's store, not in a new one inside the copy that DVC deletes."""
    home = tmp_path / "repo"
    copy = home / ".dvc" / "tmp" / "exps" / "tmpk3x"
    copy.mkdir(parents=True)
    run_id = log_stage(record("prepare", copy), TrackingSection(experiment="local"), copy)
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    assert client.get_run(run_id).info.artifact_uri.startswith((home / "mlartifacts").as_uri())
    assert sorted(path.name for path in copy.iterdir()) == ["prepare.json"]  # no store, no artifacts in the copy


def test_default_store_is_an_absolute_sqlite_file_with_local_artifacts(tmp_path: Path) -> None:
    cfg = TrackingSection(experiment="local")
    stage = record("prepare", tmp_path)
    stage.started = time.time() - 90  # NOTE: the stage worked for 90 s before it logged
    run_id = log_stage(stage, cfg, tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert 90_000 <= run.info.end_time - run.info.start_time < 150_000  # the Duration column: the stage's time
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["maskprune.kind"] == "pipeline" and parent.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)  # the UI opens it on the runs table
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
