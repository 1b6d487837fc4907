"""Relaunching a training stage under torchrun: one GPU, every GPU of a machine, or several machines.

DVC and Prefect start a stage as one process (`python -m stages.<name> [variant]`). When the params
ask for more (`runtime.nproc_per_node`, `runtime.nnodes`), that process checks the request and
replaces itself by `python -m torch.distributed.run ... -m stages.<name> [variant]`, whose workers
(which see torchrun's `LOCAL_RANK` and so never relaunch) train with DDP; rank 0 writes the outputs
and logs the stage's one MLflow run. The stage's outputs and `dvc.lock` are then those of a
one-process run, up to float nondeterminism: the global batch (`batch_size`) is split over the
processes, and every process sees its share of the same images in the same order.

One machine uses torchrun's standalone rendezvous. Several use c10d's at `runtime.rdzv_endpoint`,
each machine running the same command (by hand, Slurm's srun or a Kubernetes Job); with
`runtime.max_restarts` torchrun restarts every process after a failure, and each resumes from the
stage's last checkpoint, which must then lie where every machine sees it (`runtime.checkpoint_dir`).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from maskprune.config import RuntimeSection
from maskprune.errors import MaskpruneError
from maskprune.layout import CHECKPOINTS_DIR

# NOTE: set by torchrun in every worker it starts: such a process is a rank, never a launcher
WORKER_ENV = "LOCAL_RANK"
# NOTE: by default torchrun's agent lends its own store to its workers and keeps it across restarts, so a
# restarted rank can read the address its killed peer left there and fail to connect to it (Gloo: "Connection
# refused"; NCCL: a stale unique id; pytorch/pytorch#135712). Unshared, every restart round meets in a new store.
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


@dataclass(frozen=True)
class Launch:
    """How many training processes a stage runs, on how many machines."""

    nproc_per_node: int
    nnodes: int

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def uses_cuda(cfg: RuntimeSection) -> bool:
    """Whether the stage will train on CUDA (as `setup_runtime` decides)."""
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def processes_per_node(cfg: RuntimeSection, visible_gpus: int, cuda: bool) -> int:
    """Training processes a stage starts on each machine: `nproc_per_node`, where auto is every
    visible GPU (one process without CUDA)."""
    if cfg.nproc_per_node != "auto":
        return cfg.nproc_per_node
    return visible_gpus if cuda else 1


def plan_launch(
    cfg: RuntimeSection,
    batch_sizes: Mapping[str, int],
    visible_gpus: int,
    cuda: bool,
    scheduled: bool = False,
) -> Launch:
    """The processes to start, after refusing requests that cannot run, each in one line.

    Args:
        cfg: `runtime`.
        batch_sizes: {params key: global batch size} of every training loop the stage runs.
        visible_gpus: CUDA devices this machine shows.
        cuda: whether the stage trains on CUDA.
        scheduled: a cluster's scheduler (Slurm, Kubernetes) starts the machines and names the rendezvous.
    """
    nproc = processes_per_node(cfg, visible_gpus, cuda)
    if cuda and nproc > visible_gpus:
        raise MaskpruneError(
            f"runtime.nproc_per_node is {nproc} but this machine shows {visible_gpus} GPUs; "
            f"set it to auto or at most {visible_gpus} (or make more visible with CUDA_VISIBLE_DEVICES)"
        )
    launch = Launch(nproc, cfg.nnodes)
    for key, batch in batch_sizes.items():
        if batch % launch.world_size:
            raise MaskpruneError(
                f"{key} is {batch}, which {launch.world_size} processes ({nproc} per machine x {cfg.nnodes} "
                f"machines) cannot split evenly; make it a multiple of {launch.world_size}"
            )
    if cfg.nnodes > 1 and not cfg.rdzv_endpoint and not scheduled:
        raise MaskpruneError(
            f"runtime.nnodes is {cfg.nnodes} but runtime.rdzv_endpoint is empty; set it to host:port of "
            "a machine every node reaches (e.g. the first node's hostname:29400)"
        )
    if cfg.nnodes > 1 and not cfg.checkpoint_dir:
        raise MaskpruneError(
            f"runtime.nnodes is {cfg.nnodes} but runtime.checkpoint_dir is empty; set it to a folder every "
            "node sees (a shared file system), where a restarted stage finds its last checkpoint"
        )
    return launch


def torchrun_command(
    cfg: RuntimeSection,
    launch: Launch,
    stage_args: list[str],
    run_id: str,
) -> list[str]:
    """The command that runs `python -m <stage_args...>` as `launch.world_size` DDP processes.

    Args:
        cfg: `runtime`.
        launch: the processes, from `plan_launch`.
        stage_args: the module and its arguments, e.g. ['stages.prune', 'evit-full-0.5'].
        run_id: the rendezvous id every machine of this stage run shares.
    """
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc_per_node}"]
    if launch.nnodes == 1 and not cfg.rdzv_endpoint:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={launch.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={cfg.rdzv_endpoint}",
            f"--rdzv-id={run_id}",
        ]
    command.append(f"--max-restarts={cfg.max_restarts}")
    return [*command, "-m", *stage_args]


def torchrun_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment `torchrun_command` runs in: this one, with a fresh store for each restart round."""
    return {**environ, **TORCHRUN_ENV}


def rendezvous_id(stage: str, params_text: str) -> str:
    """The same id on every machine that runs this stage with these params, another for another run."""
    return f"maskprune-{stage.replace('@', '-')}-{hashlib.sha256(params_text.encode()).hexdigest()[:12]}"


def is_worker(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process was started by torchrun (and so trains rather than launches)."""
    return WORKER_ENV in environ


def checkpoint_root(cfg: RuntimeSection, root: Path) -> Path:
    """Where training stages keep their resumable state: `runtime.checkpoint_dir`, else <repo>/checkpoints."""
    return Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else root / CHECKPOINTS_DIR
