"""The report stage on the smoke run: its files, and the best pruned model it registers (integration)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from maskprune.checkpoint import save_model
from maskprune.models.vit import build_model
from maskprune.profile import profile_params
from maskprune.tracking.registry import WEIGHTS_TAG, training_run
from stages.report import best_pruned_model
from tests.conftest import REPO, checkpoint_meta, repro_log
from tests.report.structure import parse

SECTIONS = ("A", "B", "C", "D", "E", "T")


@pytest.mark.integration
def test_report_stage_writes_a_self_contained_report_with_a_verdict_per_section(smoke_repo: Path) -> None:
    out = smoke_repo / "reports"
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["verdicts"]) == sorted(SECTIONS) and summary["seeds"] == [0]
    assert all(summary["verdicts"][k] for k in SECTIONS) and summary["best_pruned"].startswith("prune/")
    assert not summary["best_pruned"].endswith("-1.0")  # the sham arm (keep 1.0) drops nothing: never the best pruned
    page = (out / "report.html").read_text()
    structure = parse(page)
    assert not structure.errors and not structure.stack, structure.errors
    assert all(src.startswith("data:image/png;base64,") for src in structure.images)
    markdown = (out / "report.md").read_text()
    referenced = [line.split("](")[1].rstrip(")") for line in markdown.splitlines() if line.startswith("![")]
    assert len(referenced) == len(structure.images) >= 10  # every figure of the markdown is embedded in the HTML
    assert all((out / path).is_file() for path in referenced)
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(Path(p).name for p in referenced)
    assert [h.split(".")[0] for h in structure.headings[1:]] == list(SECTIONS)
    # one seed: no test, so no claim can be reproduced or contradicted, and the report says why
    assert sorted(summary["claims"]) == ["A", "B", "C", "D"]
    for key, claim in summary["claims"].items():
        assert claim["word"] in ("inconclusive", "not testable here"), (key, claim["word"])
        assert all(row["p"] is None for row in claim["tests"]), key
    assert "no test with one seed" in markdown
    assert "tokens-prune-evit-masked-0.5.png" in markdown and "tokens-maskedkd-teacher.png" in markdown


@pytest.mark.integration
def test_best_pruned_model_is_registered_with_an_alias_and_serves_predictions(
    smoke_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import torch

    from maskprune.checkpoint import load_model
    from maskprune.data.loader import Normalizer
    from maskprune.data.storage import load_prepared

    uri = f"sqlite:///{smoke_repo / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    summary = json.loads((smoke_repo / "reports" / "summary.json").read_text())
    version = client.get_model_version_by_alias("maskprune-pruned", "champion")
    name = summary["best_pruned"]  # e.g. prune/evit-full-0.5, trained by stage prune@evit-full-0.5
    stage = name.replace("/", "@", 1)
    trained = client.get_run(version.run_id)  # the source run is the run that trained the weights
    assert version.tags["source_run"] == "the run that trained it"
    assert trained.data.tags["maskprune.stage"] == stage
    measured = json.loads((smoke_repo / "metrics" / "headline.json").read_text())[name]
    assert version.description.startswith(f"{name}, trained by stage {stage} (seed 0)")
    assert f"Test top-1 {measured['top1']:.2%}" in version.description
    assert version.tags["stage"] == stage and version.tags["test_top1"] == f"{measured['top1']:.4f}"
    assert ("throughput_ratio" in version.tags) == (measured["throughput_ratio"] is not None)
    run = client.get_run(version.tags["registered_by_run"])
    assert run.data.tags["maskprune.stage"] == "report" and run.data.tags["best_pruned"] == name
    assert run.data.tags["verdict.A"] == summary["verdicts"]["A"]
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert {"report.html", "report.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    served = mlflow.pyfunc.load_model("models:/maskprune-pruned@champion")
    test = load_prepared(smoke_repo / "data" / "prepared" / "fashion_mnist", splits=("test",)).splits["test"]
    images = test.images[:16]
    probabilities = served.predict(images.numpy())
    model, meta = load_model(smoke_repo / "models" / summary["best_pruned"])
    with torch.inference_mode():
        expected = model.eval()(
            Normalizer(meta["mean"], meta["std"], meta["model"]["img_size"], torch.device("cpu"))(images)
        ).softmax(-1)
    np.testing.assert_allclose(probabilities, expected.numpy(), atol=1e-5)
    report_output = repro_log(smoke_repo).read_text().partition("Running stage 'report'")[2]
    # NOTE: Python warnings (UserWarning: ...) and WARNING log lines, e.g. MLflow's on logging a model
    assert report_output and not re.search(r"[A-Za-z]+Warning\b|\bWARNING\b", report_output), report_output


def test_a_weights_digest_names_the_run_that_trained_them_and_no_other(tmp_path: Path) -> None:
    """A real MLflow store: of three runs, the one tagged with the weights' md5 (the newest if two are)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("x", artifact_location=(tmp_path / "artifacts").as_uri())
    older = client.create_run(experiment, start_time=1000, tags={WEIGHTS_TAG: "a" * 32}).info.run_id
    newer = client.create_run(experiment, start_time=2000, tags={WEIGHTS_TAG: "a" * 32}).info.run_id
    client.create_run(experiment, start_time=3000, tags={WEIGHTS_TAG: "b" * 32})
    assert older != newer and training_run(client, experiment, "a" * 32) == newer
    assert training_run(client, experiment, "c" * 32) is None


def test_the_best_pruned_model_is_registered_only_with_its_weights_and_above_chance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Results from a commit (a fresh clone after a seed sweep): the report stands, nothing is registered;
    nor is a best model near chance (the report's floor), which would otherwise become the champion."""
    params = profile_params("smoke", REPO)
    name = "prune/evit-masked-0.5"
    folder = tmp_path / "models" / name
    meta = checkpoint_meta(params.models.student, stage="prune@evit-masked-0.5", seed=0)
    save_model(folder, build_model(params.models.student, 10, 1), meta)
    above = {"name": "models above chance", "passed": True, "detail": "needs >= 19.0 (chance 10.0): ..."}
    near = {**above, "passed": False, "detail": "needs >= 19.0 (chance 10.0): prune/evit-masked-0.5 seed 0 10.8"}
    summary = {"seeds": [0, 1], "best_pruned": name, "best_pruned_check": above}
    unmeasured = best_pruned_model(params, tmp_path, summary)
    assert unmeasured.folder == folder and unmeasured.description.endswith(
        "evaluate has not measured these weights here."
    )
    assert unmeasured.weights_md5 == hashlib.md5((folder / "model.safetensors").read_bytes()).hexdigest()
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "headline.json").write_text(
        json.dumps({name: {"top1": 0.8456, "gmacs": 0.031478656, "throughput_ratio": 1.4738}})
    )
    card = best_pruned_model(params, tmp_path, summary)
    assert card.description == (
        "prune/evit-masked-0.5, trained by stage prune@evit-masked-0.5 (seed 0): the report's best pruned model "
        "over seeds 0,1. Test top-1 84.56%, 0.03148 GMACs per image, 1.47x the unpruned student's throughput."
    )
    assert card.tags == {
        "model": name,
        "stage": "prune@evit-masked-0.5",
        "seed": "0",
        "report_seeds": "0,1",
        "test_top1": "0.8456",
        "gmacs": "0.03148",
        "throughput_ratio": "1.474",
    }
    assert best_pruned_model(params, tmp_path, {"seeds": [0], "best_pruned": name, "best_pruned_check": near}) is None
    assert capsys.readouterr().out == (
        "report: the best pruned model, prune/evit-masked-0.5, is not registered: it fails 'models above chance' "
        "(needs >= 19.0 (chance 10.0): prune/evit-masked-0.5 seed 0 10.8)\n"
    )
    (folder / "model.safetensors").unlink()
    assert best_pruned_model(params, tmp_path, {"seeds": [0], "best_pruned": name, "best_pruned_check": above}) is None
    assert capsys.readouterr().out == (
        "report: models/prune/evit-masked-0.5 has no weights here, so it is not registered; `dvc repro` trains it\n"
    )
    assert best_pruned_model(params, tmp_path, {"best_pruned": None, "best_pruned_check": None}) is None
    assert capsys.readouterr().out == "report: no pruned model (every prune keep rate is 1.0), so none is registered\n"
