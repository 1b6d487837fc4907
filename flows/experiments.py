"""Sweeps as DVC experiments: shared tasks and result collection for the sweep flows.

Each combination of a sweep is one `dvc exp run` of one stage with `-S` overrides: `--temp` runs it
in a temporary copy (the workspace is left alone, one at a time), `--queue` + `--run-all --jobs N`
lets DVC's queue run N at a time. Experiments hold the `gpu` tag (see flows.pipeline). Every
experiment commits its stage's outputs under an exp ref, from which the sweep reads the files it
tabulates. All runs nest under one MLflow parent run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.dvc_runner import run_dvc
from flows.gpu_slots import gpus_of, holding_gpus
from maskprune import atomic
from maskprune.config import find_repo_root, load_params
from maskprune.errors import MaskpruneError
from maskprune.layout import SWEEPS_DIR
from maskprune.tracking.runs import FLOW_RUN_ENV, PARENT_ENV, Tracker, pipeline_run


@task(retries=0, cache_policy=NO_CACHE, task_run_name="experiment {name}")
def run_experiment(
    name: str, stage: str, sets: list[str], root: str, env: dict[str, str], gpus: int, queue: bool = False
) -> None:
    """One DVC experiment of `stage` with `sets` (`-S key=value`), queued instead of run with `queue`
    (which trains nothing, so holds no GPU)."""
    args = ["exp", "run", "--queue" if queue else "--temp", "-n", name, stage]
    for item in sets:
        args += ["-S", item]
    with holding_gpus(0 if queue else gpus):
        run_dvc(args, root, env)


def threads_per_job(env: dict[str, str], jobs: int, cpus: int | None = None) -> dict[str, str]:
    """`env` with OMP_NUM_THREADS = cpus // jobs (at least 1) for `jobs` experiments at a time.

    NOTE: each training otherwise takes one torch thread per core, and threads beyond the cores
    spin against each other: two 2-thread MAE trainings on 2 cores ran at 77-202 img/s instead
    of 569 alone, while two 1-thread ones ran at about 300 img/s each. A value already set wins.
    """
    if "OMP_NUM_THREADS" in env:
        return env
    return {**env, "OMP_NUM_THREADS": str(max(1, (cpus or os.cpu_count() or 1) // jobs))}


@task(cache_policy=NO_CACHE, task_run_name="dvc queue ({jobs} jobs)")
def run_queue(root: str, env: dict[str, str], jobs: int, gpus: int) -> None:
    """The queued experiments, `jobs` at a time, each on `gpus` GPUs."""
    with holding_gpus(jobs * gpus):
        run_dvc(["exp", "run", "--run-all", "--jobs", str(jobs)], root, threads_per_job(env, jobs))


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_experiment_options(
    parser: argparse.ArgumentParser,
    sets_help: str | None = None,
    jobs_help: str = "experiments at a time (>1 uses DVC's queue)",
) -> None:
    """The options every sweep CLI has: `--jobs N` and (with `sets_help`) `--set KEY=VALUE`."""
    if sets_help:
        parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=sets_help)
    parser.add_argument("--jobs", type=positive, default=1, help=jobs_help)


def experiment_refs(root: Path) -> list[str]:
    return subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def experiment_file(root: Path, refs: list[str], name: str, path: str) -> str:
    """The text of `path` as experiment `name` (its git ref among `refs`) committed it."""
    ref = next((r for r in refs if r.endswith(f"/{name}")), None)
    if ref is None:
        raise MaskpruneError(f"experiment {name} left no result; see `dvc exp show` and `dvc queue logs`")
    return subprocess.run(["git", "show", f"{ref}:{path}"], cwd=root, capture_output=True, text=True, check=True).stdout


@contextlib.contextmanager
def sweep_run(prefix: str, source: str) -> Iterator[tuple[Path, str, dict[str, str], tuple[Tracker, str] | None]]:
    """(repo root, sweep id, environment for DVC, MLflow parent) for one sweep.

    The environment points every experiment (each in its own copy of the repository) at this
    store and at the sweep's parent run.
    """
    root = find_repo_root()
    params = load_params(root / "params.yaml")
    sweep = time.strftime(f"{prefix}%Y%m%d-%H%M%S")
    env = {**os.environ, FLOW_RUN_ENV: str(flow_run.get_id() or "")}
    with pipeline_run(params.tracking, root, source, env[FLOW_RUN_ENV]) as parent:
        if parent is not None:
            env["MLFLOW_TRACKING_URI"] = parent[0].uri
            env[PARENT_ENV] = parent[1]
        yield root, sweep, env, parent
        if parent is not None:
            parent[0].client.set_tag(parent[1], "maskprune.sweep", sweep)


def run_sweep(
    prefix: str,
    source: str,
    runs: list[tuple[str, str, list[str]]],
    jobs: int,
    tabulate: Callable[[Path, str], pd.DataFrame],
) -> tuple[str, Path, pd.DataFrame]:
    """Run each (name suffix, stage, `-S` overrides) as an experiment `<sweep>-<suffix>` under one parent run.

    With `jobs` > 1 the experiments are queued and DVC runs that many at a time. `tabulate(root,
    sweep)` builds the results table, written to reports/sweeps/<sweep>.csv. Returns the sweep id,
    the table's path relative to the repository, and the table.
    """
    with sweep_run(prefix, source) as (root, sweep, env, parent):
        gpus = gpus_of(load_params(root / "params.yaml").runtime)
        for suffix, stage, overrides in runs:
            run_experiment(f"{sweep}-{suffix}", stage, overrides, str(root), env, gpus, queue=jobs > 1)
        if jobs > 1:
            run_queue(str(root), env, jobs, gpus)
        table = tabulate(root, sweep)
        out = write_table(root, sweep, table, parent)
    return sweep, out.relative_to(root), table


def write_table(root: Path, sweep: str, table: pd.DataFrame, parent: tuple[Tracker, str] | None) -> Path:
    """reports/sweeps/<sweep>.csv, also logged to the parent run."""
    out = root / SWEEPS_DIR / f"{sweep}.csv"
    atomic.write_text(out, table.to_csv(index=False))
    if parent is not None:
        parent[0].client.log_artifact(parent[1], str(out))
    return out
