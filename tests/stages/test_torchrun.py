"""Training stages relaunching themselves under torchrun (CPU, gloo), as a GPU box or a cluster runs them."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from maskprune.checkpoint import load_model
from maskprune.config import RuntimeSection
from maskprune.launch import Launch, torchrun_command, torchrun_environment
from tests.conftest import copy_run, run, subprocess_env

pytestmark = pytest.mark.integration
# NOTE: teacher and finetune objectives run under 2-process DDP in tests/test_trainer.py (through `fit`)
STAGES = ("pretrain@mae-mto", "prune@dynamicvit-masked-0.5", "distill@evit-cls_tokens")


def set_runtime(repo: Path, tracking: bool = False, **runtime: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["runtime"].update(runtime)
    params["tracking"]["enabled"] = tracking
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stage_command(stage: str) -> list[str]:
    name, _, variant = stage.partition("@")
    return [sys.executable, "-m", f"stages.{name}", *([variant] if variant else [])]


@pytest.fixture(scope="module")
def ddp_repo(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the smoke run (tracking off) whose training stages ask for 2 processes."""
    repo = copy_run(smoke_run, tmp_path_factory.mktemp("ddp") / "repo")
    set_runtime(repo, nproc_per_node=2)
    return repo


@pytest.mark.parametrize("stage", STAGES)
def test_stage_relaunches_under_torchrun_with_two_processes_and_rank_zero_writes(ddp_repo: Path, stage: str) -> None:
    name, _, variant = stage.partition("@")
    folder = ddp_repo / "models" / name / variant
    before = (folder / "metrics.json").stat().st_mtime_ns
    done = run(stage_command(stage), ddp_repo, PYTHONPATH="src", OMP_NUM_THREADS="1")
    assert done.stdout.count(f"{stage}: done in") == 1  # only rank 0 reports (and writes)
    assert (folder / "metrics.json").stat().st_mtime_ns > before
    history = pd.read_csv(folder / "history.csv")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert len(history) >= 1 and all(pd.notna(history["train_loss"]))
    saved = folder / "finetune" if name == "distill" else folder
    model, _ = load_model(saved)  # a complete, loadable checkpoint
    assert model.num_patches == 49 and metrics


def test_dvc_repro_with_two_processes_ends_as_one_process_does(smoke_run: Path, tmp_path: Path) -> None:
    repo = copy_run(smoke_run, tmp_path / "repo")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    set_runtime(repo, tracking=True, nproc_per_node=2)
    stage, folder = "finetune@full", Path("models/finetune/full")
    run(["dvc", "repro", "--force", "--single-item", stage], repo, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=store)
    one = pd.read_csv(smoke_run / folder / "history.csv")
    two = pd.read_csv(repo / folder / "history.csv")
    # the same images in the same order, the global batch split over 2 processes: equal up to the order
    # in which gloo sums the two halves' gradients
    assert list(two["train_loss"]) == pytest.approx(list(one["train_loss"]), rel=1e-4)
    val_images = json.loads((repo / "data" / "prepared" / "fashion_mnist" / "meta.json").read_text())["counts"]["val"]
    assert list(two["val_top1"]) == pytest.approx(list(one["val_top1"]), abs=2 / val_images)  # 2 images at most
    loss_gap = ((two["train_loss"] - one["train_loss"]).abs() / one["train_loss"]).max()
    top1_gap = (two["val_top1"] - one["val_top1"]).abs().max() * val_images
    print(f"2 processes against 1: train loss within rel {loss_gap:.1e}, val top-1 within {top1_gap:.0f} images")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
    assert {out["path"] for out in lock["outs"]} == {
        (folder / name).as_posix() for name in ("model.safetensors", "meta.json", "history.csv", "metrics.json")
    }
    runs = MlflowClient(store).search_runs(
        [e.experiment_id for e in MlflowClient(store).search_experiments()], f"tags.`maskprune.stage` = '{stage}'"
    )
    assert len(runs) == 1 and runs[0].data.tags["processes"] == "2"  # rank 0's, not one per process


def test_two_machines_train_one_stage_through_a_rendezvous(smoke_run: Path, tmp_path: Path) -> None:
    """Two 'nodes' on this machine (one process each), meeting at a c10d rendezvous on 127.0.0.1."""
    repo = copy_run(smoke_run, tmp_path / "repo")
    endpoint = f"127.0.0.1:{free_port()}"
    set_runtime(repo, nproc_per_node=1, nnodes=2, rdzv_endpoint=endpoint, checkpoint_dir=str(tmp_path / "shared"))
    env = subprocess_env(PYTHONPATH="src", OMP_NUM_THREADS="1")
    nodes = [
        subprocess.Popen(stage_command("finetune@full"), cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0]
    assert "".join(outputs).count("finetune@full: done in") == 1  # rank 0, on whichever node it landed
    assert (tmp_path / "shared" / "finetune" / "full" / "state.json").is_file()  # where every node looks


def test_a_killed_rank_rejoins_and_the_stage_resumes_from_its_checkpoint(smoke_run: Path, tmp_path: Path) -> None:
    repo = copy_run(smoke_run, tmp_path / "repo")
    shared = tmp_path / "shared"
    set_runtime(repo, nproc_per_node=2, max_restarts=1, checkpoint_dir=str(shared))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["finetune"]["train"]["epochs"] = 4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = subprocess_env(PYTHONPATH="src", OMP_NUM_THREADS="1")
    stage = subprocess.Popen(
        stage_command("finetune@full"), cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    state = shared / "finetune" / "full" / "state.json"
    deadline = time.monotonic() + 300
    while not (state.is_file() and json.loads(state.read_text())["epoch"] >= 1):
        assert stage.poll() is None and time.monotonic() < deadline, "the stage ended before its first checkpoint"
        time.sleep(0.05)
    workers = [
        p for p in psutil.Process(stage.pid).children(recursive=True) if "stages.finetune" in " ".join(p.cmdline())
    ]
    rank1 = next(p for p in workers if p.environ().get("RANK") == "1")
    rank1.kill()
    output = stage.communicate(timeout=600)[0]
    assert stage.returncode == 0, output[-3000:]
    assert "finetune@full: resuming after epoch" in output
    history = pd.read_csv(repo / "models" / "finetune" / "full" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]


RESTARTED_WORKER = """
import os
import time

import torch.distributed as dist

attempt, rank = int(os.environ["TORCHELASTIC_RESTART_COUNT"]), int(os.environ["RANK"])
store, _, world_size = next(dist.rendezvous("env://"))
if attempt == 0:
    store.set(f"left-by-rank-{rank}", "attempt 0")
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    dist.barrier()
    if rank == 1:
        os._exit(3)  # torchrun stops rank 0 and restarts both
    time.sleep(120)
stale = store.check(["left-by-rank-0"]) or store.check(["left-by-rank-1"])
dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
dist.barrier()
print(f"attempt {attempt} rank {rank}: {'stale' if stale else 'fresh'} store", flush=True)
"""


def test_a_restarted_worker_group_meets_in_a_fresh_store(tmp_path: Path) -> None:
    """torchrun's shared store keeps the killed workers' keys, among them the address a restarted rank
    dials (connection refused, in about half the restarts); the launch asks for a new store per round."""
    (tmp_path / "restarted_worker.py").write_text(RESTARTED_WORKER)
    command = torchrun_command(RuntimeSection(max_restarts=1), Launch(2, 1), ["restarted_worker"], "restart")
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=torchrun_environment(subprocess_env(PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(
        re.findall(r"attempt \d rank \d: \w+ store", done.stdout)
    )  # NOTE: the two ranks' lines may interleave
    assert lines == ["attempt 1 rank 0: fresh store", "attempt 1 rank 1: fresh store"]
