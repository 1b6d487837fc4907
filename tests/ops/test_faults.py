"""Faults a shared set-up meets: a worker killed mid-stage, tracking down, a wrong service URL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import VENV_BIN, copy_repo, copy_run, run, subprocess_env
from tests.services import free_port

pytestmark = pytest.mark.integration


def test_a_stage_killed_mid_run_resumes_from_its_checkpoint(smoke_run: Path, tmp_path: Path) -> None:
    repo = copy_run(smoke_run, tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teacher"]["epochs"] = 3  # the smoke profile's 2, plus one: a new config, trained from scratch
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "models" / "teacher" / "model.safetensors").unlink()  # so a killed run shows no new weights
    state = repo / "checkpoints" / "teacher" / "state.json"
    proc = subprocess.Popen(
        [str(Path(VENV_BIN) / "dvc"), "repro", "teacher"],
        cwd=repo,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (state.is_file() and json.loads(state.read_text())["epoch"] >= 1):
        assert proc.poll() is None, "the teacher stage ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # as when a worker's machine goes away mid-stage
    proc.wait()
    done = json.loads(state.read_text())["epoch"]
    assert not (repo / "models" / "teacher" / "model.safetensors").exists()  # nothing half-written
    out = run(["dvc", "repro", "teacher"], repo).stdout
    assert f"teacher: resuming after epoch {done}" in out
    history = pd.read_csv(repo / "models" / "teacher" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]


def test_tracking_down_keeps_the_outputs_and_says_how_to_relog(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    dead = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "stages.prepare"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=subprocess_env(PYTHONPATH="src", MLFLOW_TRACKING_URI=dead),
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (repo / "data" / "prepared" / "fashion_mnist" / "meta.json").is_file()
    assert "outputs are complete on disk" in done.stderr and "python -m stages.prepare --log-only" in done.stderr
    assert "MLFLOW_TRACKING_URI" in done.stderr


def test_an_unreachable_prefect_server_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    api = f"http://127.0.0.1:{free_port()}/api"
    done = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--stage", "prepare"],
        cwd=copy_repo(tmp_path / "r"),
        capture_output=True,
        text=True,
        env=subprocess_env(PREFECT_API_URL=api, PYTHONPATH="."),
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("maskprune: error")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert f"PREFECT_API_URL={api}" in errors[0] and "prefect server start" in errors[0]
