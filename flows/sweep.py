"""The MaskedKD sweep as a Prefect flow: teacher keep ratio x patch criterion, one DVC experiment each.

    python -m flows.sweep                        # keep {1.0, 0.75, 0.5, 0.25} x {student_attn, random}
    python -m flows.sweep --ablation             # also teacher_attn and bottom_k
    python -m flows.sweep --keep 0.5 0.25 --criteria student_attn --set finetune.train.train_limit=20000
    python -m flows.sweep --jobs 2               # queue them and let DVC run two at a time

Each combination runs `dvc exp run --temp finetune@masked_kd -S ...` (in a temporary copy, so the
workspace is left alone) under one MLflow parent run; keep 1.0 runs once, as no patch is chosen.
The results (student val top-1, teacher GMACs per image, teacher throughput as a ratio to the full
image, total training FLOPs) are printed, written to reports/sweeps/<sweep>.csv and logged to
the parent run; `dvc exp show` and the MLflow compare view list the same runs side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from itertools import product
from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.dvc import run_dvc
from maskprune import atomic
from maskprune.config import find_repo_root, load_params
from maskprune.errors import MaskpruneError, exit_on_user_error
from maskprune.masking import CRITERIA
from maskprune.tracking import FLOW_RUN_ENV, PARENT_ENV, pipeline_run

STAGE = "finetune@masked_kd"
METRICS = "models/finetune/masked_kd/metrics.json"
KEEP_RATIOS = (1.0, 0.75, 0.5, 0.25)
MAIN_CRITERIA = ("student_attn", "random")
COLUMNS = ("val_top1", "teacher_gmacs_per_image", "teacher_gmacs_ratio", "teacher_img_per_s",
           "teacher_throughput_ratio", "train_tflops", "wall_seconds")  # fmt: skip


def combinations(keep_ratios: list[float], criteria: list[str]) -> list[tuple[float, str]]:
    """(teacher keep, criterion) pairs; keep 1.0 once (the teacher sees every patch)."""
    bad = [c for c in criteria if c not in CRITERIA]
    if bad:
        raise MaskpruneError(f"unknown criterion {bad[0]!r}; choose from {', '.join(CRITERIA)}")
    if not keep_ratios or not criteria or any(not 0.0 < k <= 1.0 for k in keep_ratios):
        raise MaskpruneError("give at least one criterion and keep ratios in (0, 1]")
    pairs = [(1.0, "none")] if 1.0 in keep_ratios else []
    return pairs + [(k, c) for k, c in product(keep_ratios, criteria) if k != 1.0]


def experiment_name(sweep: str, keep: float, criterion: str) -> str:
    return f"{sweep}-{criterion.replace('_', '')}-k{round(keep * 100):03d}"


def experiment_sets(keep: float, criterion: str, extra: list[str]) -> list[str]:
    sets = [f"finetune.masked_kd.teacher_keep={keep}"]
    if criterion != "none":
        sets.append(f"finetune.masked_kd.criterion={criterion}")
    return sets + list(extra)


@task(retries=0, cache_policy=NO_CACHE, task_run_name="experiment {name}")
def run_experiment(name: str, sets: list[str], root: str, env: dict[str, str], queue: bool = False) -> None:
    """One DVC experiment of the masked_kd stage (queued instead of run with `queue`)."""
    flags = ["--queue"] if queue else ["--temp"]
    args = ["exp", "run", *flags, "-n", name, STAGE]
    for item in sets:
        args += ["-S", item]
    run_dvc(args, root, env)


@task(cache_policy=NO_CACHE, task_run_name="dvc queue ({jobs} jobs)")
def run_queue(root: str, env: dict[str, str], jobs: int) -> None:
    run_dvc(["exp", "run", "--run-all", "--jobs", str(jobs)], root, env)


def experiment_metrics(root: Path, refs: list[str], name: str) -> dict[str, float]:
    """The masked_kd metrics committed in experiment `name` (its git ref among `refs`)."""
    ref = next((r for r in refs if r.endswith(f"/{name}")), None)
    if ref is None:
        raise MaskpruneError(f"experiment {name} left no result; see `dvc exp show` and `dvc queue logs`")
    text = subprocess.run(["git", "show", f"{ref}:{METRICS}"], cwd=root, capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    return json.loads(text)


def sweep_table(root: Path, sweep: str, pairs: list[tuple[float, str]]) -> pd.DataFrame:
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=root,
                          capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    rows = []
    for keep, criterion in pairs:
        name = experiment_name(sweep, keep, criterion)
        metrics = experiment_metrics(root, refs, name)
        rows.append({"experiment": name, "teacher_keep": keep, "criterion": criterion,
                     **{c: metrics.get(c) for c in COLUMNS}})  # fmt: skip
    return pd.DataFrame(rows)


@flow(name="maskprune-maskedkd-sweep", log_prints=True)
def maskedkd_sweep(
    keep_ratios: list[float] = list(KEEP_RATIOS),
    criteria: list[str] = list(MAIN_CRITERIA),
    sets: list[str] | None = None,
    jobs: int = 1,
) -> list[dict[str, object]]:
    """Run the sweep; returns one row per experiment (also in reports/sweeps/<sweep>.csv)."""
    root = find_repo_root()
    params = load_params(root / "params.yaml")
    pairs = combinations(keep_ratios, criteria)
    sweep = time.strftime("mkd%Y%m%d-%H%M%S")
    env = {**os.environ, FLOW_RUN_ENV: str(flow_run.get_id() or "")}
    with pipeline_run(params.tracking, root, "prefect sweep", env[FLOW_RUN_ENV]) as parent:
        if parent is not None:
            # NOTE: experiments run in temporary copies of the repository: point them at this store.
            env["MLFLOW_TRACKING_URI"] = parent[0].uri
            env[PARENT_ENV] = parent[1]
        for keep, criterion in pairs:
            run_experiment(experiment_name(sweep, keep, criterion), experiment_sets(keep, criterion, sets or []),
                           str(root), env, queue=jobs > 1)  # fmt: skip
        if jobs > 1:
            run_queue(str(root), env, jobs)
        table = sweep_table(root, sweep, pairs)
        out = root / "reports" / "sweeps" / f"{sweep}.csv"
        atomic.write_text(out, table.to_csv(index=False))
        if parent is not None:
            tracker, run_id = parent
            tracker.client.log_artifact(run_id, str(out))
            tracker.client.set_tag(run_id, "maskprune.sweep", sweep)
    print(f"MaskedKD sweep {sweep} -> {out.relative_to(root)}\n{table.to_string(index=False)}")
    return table.to_dict("records")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--keep", type=float, nargs="+", default=list(KEEP_RATIOS), help="teacher keep ratios")
    parser.add_argument("--criteria", nargs="+", default=list(MAIN_CRITERIA), choices=CRITERIA)
    parser.add_argument("--ablation", action="store_true", help="add the teacher_attn and bottom_k criteria")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="extra params for every experiment (as `dvc exp run -S`)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="experiments at a time (>1 uses DVC's queue)")
    args = parser.parse_args(argv)
    criteria = list(dict.fromkeys([*args.criteria, *(("teacher_attn", "bottom_k") if args.ablation else ())]))
    if args.jobs < 1:
        raise MaskpruneError("--jobs must be at least 1")
    maskedkd_sweep(keep_ratios=args.keep, criteria=criteria, sets=args.sets, jobs=args.jobs)


if __name__ == "__main__":
    main()
