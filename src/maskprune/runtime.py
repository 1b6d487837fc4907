"""Where and how a stage runs: device, precision, threads, seeding and torchrun/DDP ranks."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass
from typing import ContextManager

import numpy as np
import torch
import torch.distributed as dist

from maskprune.config import RuntimeSection
from maskprune.errors import MaskpruneError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None = full precision
    compile: bool
    progress: bool  # show a progress bar (terminals only by default)
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> ContextManager[object]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _init_distributed(device_type: str) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; joins the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, 0
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return rank, world_size, local_rank


def setup_runtime(cfg: RuntimeSection) -> Runtime:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise MaskpruneError("runtime.device is 'cuda' but no CUDA GPU is visible; "
                             "set runtime.device to 'auto' or 'cpu'")  # fmt: skip
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    rank, world_size, local_rank = _init_distributed("cuda" if use_cuda else "cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    amp = torch.bfloat16 if cfg.amp == "bf16" or (cfg.amp == "auto" and use_cuda) else None
    progress = cfg.progress == "always" or (cfg.progress == "auto" and sys.stderr.isatty())
    return Runtime(device, amp, cfg.compile, progress and rank == 0, rank, world_size)


def all_reduce_sum(values: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Sum a tensor over all ranks (identity in a single process)."""
    if runtime.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
