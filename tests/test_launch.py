"""How a stage decides to relaunch under torchrun, and what it refuses (no processes are started here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from maskprune.config import RuntimeSection
from maskprune.errors import MaskpruneError
from maskprune.launch import Launch, checkpoint_root, is_worker, plan_launch, rendezvous_id, torchrun_command


def runtime(**changes: object) -> RuntimeSection:
    return RuntimeSection.model_validate(changes)


def test_auto_is_every_visible_gpu_and_one_process_on_a_cpu() -> None:
    assert plan_launch(runtime(), {}, visible_gpus=8, cuda=True) == Launch(8, 1)
    assert plan_launch(runtime(), {}, visible_gpus=0, cuda=False) == Launch(1, 1)
    assert plan_launch(runtime(nproc_per_node=2), {}, visible_gpus=0, cuda=False).world_size == 2  # gloo
    assert plan_launch(runtime(nproc_per_node=4, nnodes=2, rdzv_endpoint="a:1", checkpoint_dir="/s"), {}, 4, True) == (
        Launch(4, 2)
    )


@pytest.mark.parametrize(
    ("changes", "batches", "message"),
    [
        (
            {"nproc_per_node": 4},
            {},
            "runtime.nproc_per_node is 4 but this machine shows 2 GPUs; set it to auto or at most 2",
        ),
        (
            {"nproc_per_node": 2, "nnodes": 2, "rdzv_endpoint": "node0:29400", "checkpoint_dir": "/shared"},
            {"prune.train.batch_size": 6},
            "prune.train.batch_size is 6, which 4 processes (2 per machine x 2 machines) cannot split evenly; "
            "make it a multiple of 4",
        ),
        ({"nnodes": 2, "checkpoint_dir": "/shared"}, {}, "runtime.nnodes is 2 but runtime.rdzv_endpoint is empty"),
        ({"nnodes": 2, "rdzv_endpoint": "node0:29400"}, {}, "runtime.nnodes is 2 but runtime.checkpoint_dir is empty"),
    ],
)
def test_nonsense_is_refused_in_one_line(changes: dict, batches: dict, message: str) -> None:
    with pytest.raises(MaskpruneError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as err:
        plan_launch(runtime(**changes), batches, visible_gpus=2, cuda=True)
    assert "\n" not in str(err.value)


def test_a_batch_that_divides_passes() -> None:
    assert plan_launch(runtime(nproc_per_node=2), {"finetune.train.batch_size": 64}, 2, True).world_size == 2


def test_one_machine_runs_standalone_and_several_meet_at_the_endpoint() -> None:
    one = torchrun_command(runtime(max_restarts=1), Launch(2, 1), ["stages.prune", "evit-full-0.5"], "id")
    assert one == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--standalone",
        "--max-restarts=1",
        "-m",
        "stages.prune",
        "evit-full-0.5",
    ]
    cfg = runtime(nnodes=2, rdzv_endpoint="node0:29400", checkpoint_dir="/shared")
    several = torchrun_command(cfg, Launch(8, 2), ["stages.teacher"], "maskprune-teacher-abc")
    assert several[3:9] == [
        "--nproc-per-node=8",
        "--nnodes=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=node0:29400",
        "--rdzv-id=maskprune-teacher-abc",
        "--max-restarts=0",
    ]
    assert several[-2:] == ["-m", "stages.teacher"]


def test_the_rendezvous_id_is_shared_by_the_same_run_and_differs_for_another() -> None:
    first = rendezvous_id("prune@evit-full-0.5", "seed: 0\n")
    assert first == rendezvous_id("prune@evit-full-0.5", "seed: 0\n") and first.startswith(
        "maskprune-prune-evit-full-0.5-"
    )
    assert first != rendezvous_id("prune@evit-full-0.5", "seed: 1\n")
    assert first != rendezvous_id("prune@evit-full-0.7", "seed: 0\n")


def test_workers_are_the_processes_torchrun_started() -> None:
    assert is_worker({"LOCAL_RANK": "0", "RANK": "3"}) and not is_worker({})


def test_checkpoints_default_to_the_repository_and_follow_the_setting(tmp_path: Path) -> None:
    assert checkpoint_root(runtime(), tmp_path) == tmp_path / "checkpoints"
    assert checkpoint_root(runtime(checkpoint_dir="/mnt/shared/run1"), tmp_path) == Path("/mnt/shared/run1")
