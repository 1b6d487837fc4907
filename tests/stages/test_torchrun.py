"""Every kind of training stage under `torchrun --nproc_per_node=2` (CPU, gloo), as a GPU box would run it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from maskprune.checkpoint import load_model
from tests.conftest import copy_run, run

pytestmark = pytest.mark.integration
# NOTE: teacher and finetune objectives run under 2-process DDP in tests/test_trainer.py (through `fit`)
STAGES = ("pretrain@mae-mto", "prune@dynamicvit-masked-0.5", "distill@evit-cls_tokens")


@pytest.fixture(scope="module")
def ddp_repo(smoke_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the smoke run (tracking off) that the torchrun stages may overwrite."""
    repo = copy_run(smoke_repo, tmp_path_factory.mktemp("ddp") / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tracking"]["enabled"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


@pytest.mark.parametrize("stage", STAGES)
def test_stage_trains_under_torchrun_with_two_processes_and_rank_zero_writes(ddp_repo: Path, stage: str) -> None:
    name, _, variant = stage.partition("@")
    folder = ddp_repo / "models" / name / variant
    before = (folder / "metrics.json").stat().st_mtime_ns
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    done = run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", f"stages.{name}", variant],
        ddp_repo,
        PYTHONPATH="src",
        OMP_NUM_THREADS="1",
    )
    assert done.stdout.count(f"{stage}: done in") == 1  # only rank 0 reports (and writes)
    assert (folder / "metrics.json").stat().st_mtime_ns > before
    history = pd.read_csv(folder / "history.csv")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert len(history) >= 1 and all(pd.notna(history["train_loss"]))
    saved = folder / "finetune" if name == "distill" else folder
    model, _ = load_model(saved)  # a complete, loadable checkpoint
    assert model.num_patches == 49 and metrics
