"""The command-line shell every DVC stage shares: load params, compute, write, then log.

    python -m stages.<name> [VARIANT] [--log-only]

A stage with variants (a DVC `foreach` or `matrix`) takes the variant as its one argument and passes
it to its compute and record functions as `variant=`; `variants` lists the valid names or is a
parser that raises a MaskpruneError for an invalid one. `--log-only` skips the computation and logs
the stage's existing outputs to MLflow again (after a tracking outage). Errors in the user's input
end the process with one line, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from maskprune.config import PARAMS_FILE, Params, find_repo_root, load_params
from maskprune.errors import exit_on_user_error
from maskprune.launch import (
    is_worker,
    plan_launch,
    rendezvous_id,
    torchrun_command,
    torchrun_environment,
    uses_cuda,
)
from maskprune.runtime import Runtime, setup_runtime
from maskprune.tracking.runs import StageRecord, log_stage

Compute = Callable[[Params, Path, Runtime], None]
Record = Callable[[Params, Path], StageRecord]
Variants = Sequence[str] | Callable[[str], object]
# {params key: global batch size} of each training loop a stage variant runs (None: no variant)
BatchSizes = Callable[[Params, str | None], dict[str, int]]


def run_stage(
    name: str,
    compute: Compute,
    record: Record,
    argv: list[str] | None = None,
    variants: Variants = (),
    batch_sizes: BatchSizes | None = None,
) -> None:
    """Run a stage from the command line; a training stage (one with `batch_sizes`) relaunches itself
    under torchrun when `runtime` asks for more than one process (see maskprune.launch)."""
    exit_on_user_error(_run)(name, compute, record, argv, variants, batch_sizes)


def _relaunch(module: str, stage: str, argv: list[str], params: Params, root: Path, batches: dict[str, int]) -> bool:
    """Run the stage as torchrun's DDP processes if `runtime` asks for them; whether it did."""
    cfg = params.runtime
    launch = plan_launch(cfg, batches, torch.cuda.device_count(), uses_cuda(cfg))
    if launch.world_size == 1 or not batches:  # NOTE: no batches: nothing to train (a teacher used as it is)
        return False
    run_id = rendezvous_id(stage, (root / PARAMS_FILE).read_text())
    done = subprocess.run(torchrun_command(cfg, launch, [module, *argv], run_id), cwd=root, env=torchrun_environment())
    if done.returncode:
        raise SystemExit(done.returncode)  # NOTE: the workers printed the cause
    return True


def _run(
    name: str,
    compute: Compute,
    record: Record,
    argv: list[str] | None,
    variants: Variants,
    batch_sizes: BatchSizes | None,
) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    if variants:
        parser.add_argument("variant", choices=None if callable(variants) else variants)
    parser.add_argument(
        "--log-only", action="store_true", help="log the existing outputs to MLflow without recomputing them"
    )
    args = parser.parse_args(argv)
    if callable(variants):
        variants(args.variant)
    if variants:
        name = f"{name}@{args.variant}"
        compute, record = partial(compute, variant=args.variant), partial(record, variant=args.variant)
    root = find_repo_root()
    params = load_params(root / PARAMS_FILE)
    module = f"stages.{name.partition('@')[0]}"
    if batch_sizes and not args.log_only and not is_worker():
        stage_argv = sys.argv[1:] if argv is None else argv
        if _relaunch(module, name, stage_argv, params, root, batch_sizes(params, args.variant if variants else None)):
            return
    started, began = time.perf_counter(), time.time()
    if not args.log_only:
        compute(params, root, setup_runtime(params.runtime))
    if os.environ.get("RANK", "0") == "0":
        logged = record(params, root)
        logged.started = None if args.log_only else began  # NOTE: the run's Duration is the stage's own
        # NOTE: every stage run carries these, so the MLflow compare view lines runs up by them
        logged.tags = {
            "seed": str(params.seed),
            "processes": os.environ.get("WORLD_SIZE", "1"),  # NOTE: torchrun's, in its workers
            **({"variant": args.variant} if variants else {}),
            **logged.tags,
        }
        log_stage(logged, params.tracking, root)
        print(f"{name}: done in {time.perf_counter() - started:.1f}s")
