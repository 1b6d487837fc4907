"""Where and how a stage runs: device, precision, threads, seeding and torchrun/DDP ranks."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from maskprune.config import RuntimeSection
from maskprune.errors import MaskpruneError

# NOTE: CPU flags of the units that run bf16 natively; without them bf16 is emulated and slower
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16"}  # autocast dtype -> the name results record


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype of training steps, None = full precision
    compile: bool
    progress: bool  # show a progress bar (terminals only by default)
    rank: int = 0
    world_size: int = 1
    inference_amp_dtype: torch.dtype | None = None  # autocast dtype of eval-mode forwards
    loader_workers: int = 0  # processes that decode sharded data for this process (0 = in this process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def precision(self) -> dict[str, str]:
        """{'training': ..., 'inference': ...}, each 'fp32' or 'bf16' (runtime.amp 'auto' resolves by
        host: bf16 on a GPU, bf16 inference on a CPU with native bf16)."""
        return {"training": PRECISION_NAMES[self.amp_dtype], "inference": PRECISION_NAMES[self.inference_amp_dtype]}

    @property
    def bf16_epoch(self) -> dict[str, float]:
        """What each epoch of a training history records of its precision (1 = under bf16 autocast, 0 =
        fp32): a resumed stage's epochs may have run on another host."""
        return {f"{kind}_bf16": float(name == "bf16") for kind, name in self.precision.items()}

    def autocast(self, inference: bool = False) -> AbstractContextManager[object]:
        """Autocast for a training step, or with `inference` for eval-mode forwards."""
        dtype = self.inference_amp_dtype if inference else self.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

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


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first CPU in `cpuinfo` (empty where there is no such file)."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def amp_dtypes(
    amp: Literal["auto", "bf16", "fp32"],
    cuda: bool,
    flags: frozenset[str],
) -> tuple[torch.dtype | None, torch.dtype | None]:
    """Autocast dtypes (training, inference) for `runtime.amp`.

    Args:
        amp: `runtime.amp`.
        cuda: whether the stage runs on a CUDA device.
        flags: the CPU's feature flags (`cpu_flags()`).
    """
    if amp == "bf16" or (amp == "auto" and cuda):
        return torch.bfloat16, torch.bfloat16
    if amp == "auto" and flags & NATIVE_BF16_FLAGS:
        # NOTE: measured on a 2-core Xeon with AMX: bf16 inference 1.7-3.1x faster than fp32, training
        # steps slower (206 vs 280-346 img/s), so training stays fp32 (benchmarks: the precision part)
        return None, torch.bfloat16
    return None, None


def setup_runtime(cfg: RuntimeSection) -> Runtime:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise MaskpruneError(
            "runtime.device is 'cuda' but no CUDA GPU is visible; set runtime.device to 'auto' or 'cpu'"
        )
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    rank, world_size, local_rank = _init_distributed("cuda" if use_cuda else "cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train_amp, inference_amp = amp_dtypes(cfg.amp, use_cuda, frozenset() if use_cuda else cpu_flags())
    progress = cfg.progress == "always" or (cfg.progress == "auto" and sys.stderr.isatty())
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    # NOTE: on a CPU the training itself uses every core, and loader processes only compete with it
    # (2 cores: 0.93x the img/s of batches from memory with 2 workers, 0.94x with 1, 0.96x decoding in-process)
    workers = cfg.loader_workers or (max(1, min(8, (os.cpu_count() or 1) // local)) if use_cuda else 0)
    return Runtime(device, train_amp, cfg.compile, progress and rank == 0, rank, world_size, inference_amp, workers)


def all_reduce_sum(values: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Sum a tensor over all ranks (identity in a single process)."""
    if runtime.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
