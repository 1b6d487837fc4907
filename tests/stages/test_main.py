"""`python -m stages` and scripts/gpu_check.sh: the pipeline without DVC, MLflow or Prefect.

The stage list is checked against DVC's own reading of dvc.yaml (`dvc stage list`, `dvc dag`), and
the GPU check's CPU run (smoke profile) against the `dvc repro` of the same profile.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maskprune.profile import profile_params
from stages.__main__ import expand_stages, main
from tests.conftest import NARROW_STAGES, REPO, narrow_sets, run, subprocess_env


def dvc_names(repo: Path) -> list[str]:
    return [line.split()[0] for line in run(["dvc", "stage", "list"], repo).stdout.splitlines() if line.strip()]


def test_expanded_stages_are_dvcs_own_in_a_dependency_order() -> None:
    params = profile_params("cpu", REPO)  # the committed params.yaml, which DVC reads
    commands = expand_stages(yaml.safe_load((REPO / "dvc.yaml").read_text()), params.model_dump())
    names = [name for name, _, _ in commands]
    assert names == dvc_names(REPO)
    order = {name: i for i, name in enumerate(names)}
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', run(["dvc", "dag", "--dot"], REPO).stdout)
    assert len(edges) > len(names)
    for upstream, downstream in edges:
        assert order[upstream] < order[downstream], f"{downstream} would run before {upstream}"
    assert ("prune@evit-masked-0.5", "stages.prune", ["evit-masked-0.5"]) in commands
    assert ("evaluate", "stages.evaluate", []) in commands


def test_bad_input_gets_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    taken = tmp_path / "taken"
    taken.mkdir()
    for args, message in (
        (["--workspace", str(taken)], "exists; every stage runs afresh"),
        (["--workspace", str(tmp_path / "new"), "--set", "prune.keep_rate=[0.5]"], "is not a params key"),
        (["--workspace", str(tmp_path / "new"), "--set", "seed=[1"], "the value is not YAML"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(args)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    done = subprocess.run(["bash", "scripts/gpu_check.sh", str(REPO)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "is not empty" in done.stderr


def blocked_packages(folder: Path) -> Path:
    """A folder of stand-ins that fail to import, for the packages a bare GPU machine lacks."""
    for name in ("dvc", "mlflow", "prefect", "scipy", "psutil"):
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is not on this machine')\n")
    return folder


def test_gpu_check_runs_every_stage_kind_without_the_orchestration_packages(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The narrower matrix (every stage kind, 15 stages of 24) through SETS: the check's own switch.

    NOTE: the smoke run is asked for only after the check has run, so that a test process runs the
    check while another builds the smoke run (tests.conftest.pytest_collection_modifyitems).
    """
    out = tmp_path / "check"
    env = subprocess_env(
        PYTHON=sys.executable,
        PYTHONPATH=str(blocked_packages(tmp_path / "blocked")),
        SETS=" ".join(narrow_sets()),
    )
    done = subprocess.run(["bash", "scripts/gpu_check.sh", str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    facts = json.loads((out / "environment.json").read_text())
    assert facts["cuda"] is False and facts["orchestration"]["mlflow"]  # installed, yet never imported
    bench = json.loads(next((out / "benchmarks").glob("*.json")).read_text())
    assert {r["mode"] for r in bench["pruning"] + bench["teacher"]} == {"eager"}
    assert all(r["aa_speedup"] > 0 for r in bench["pruning"])
    ran = json.loads((out / "pipeline" / "stages.json").read_text())
    assert [s["stage"] for s in ran["stages"]] == list(NARROW_STAGES) and ran["profile"] == "smoke"
    assert "## Verdicts" in (out / "report.md").read_text()
    assert json.loads((out / "summary.json").read_text())["seeds"] == [0]
    # the same stages as `dvc repro` ran them, in one process instead of one each: the same models
    direct = json.loads((out / "evaluate.json").read_text())
    smoke_run = request.getfixturevalue("smoke_run")
    by_dvc = json.loads((smoke_run / "metrics" / "evaluate.json").read_text())
    assert {"teacher", "finetune/masked_kd", "prune/evit-masked-0.5", "tome/masked-evit-masked-0.5"} <= set(
        direct["models"]
    )
    assert set(direct["models"]) < set(by_dvc["models"])
    for name, entry in direct["models"].items():
        assert entry["top1"] == pytest.approx(by_dvc["models"][name]["top1"], abs=0.02), name
        assert entry["gmacs"] == pytest.approx(by_dvc["models"][name]["gmacs"], rel=1e-6), name
