"""The DVC pipeline as a Prefect flow: one task per stage, DVC decides what to skip.

    python -m flows.pipeline                       # run once (ephemeral Prefect, no server needed)
    python -m flows.pipeline --stage teacher       # run up to one stage
    python -m flows.pipeline --serve --cron "0 3 * * *"   # serve on a schedule (needs a server)

    python -m flows.pipeline --jobs 2              # two stages at a time (2 cores: 1.15-1.26x faster)

Each task runs `dvc repro --single-item <stage>` once the stages it depends on have finished, so
DVC's own change detection is the only cache (Prefect caching is off). A stage DVC skips ends in a
state of its own, Skipped (of type Completed); each task waits for the tasks of the stages it depends
on, which Prefect draws as the flow's graph. With `--jobs N` up to N stages run at a time, the one
heading the longest chain of expected seconds first (flows.scheduling); DVC releases its repository lock while
a stage's command runs and `--wait-for-lock` makes the other wait while one records its outputs. Each
training stage then gets `OMP_NUM_THREADS` = cores / N unless it is set (more torch threads than cores
spin against each other); evaluate, which waits for every model, runs alone with the machine's
threads, so its throughput ratios are measured as with one job. A failed stage stops the stages
that depend on it; the others go on, and the flow then fails. When `dvc status` finds nothing to
do, the flow opens no MLflow run (a nightly schedule leaves no empty parents); otherwise it opens the
parent run and hands its id to every stage through the environment. The task
of a training stage holds one of this machine's GPU slots per process the stage starts (it
relaunches itself under torchrun for `runtime.nproc_per_node` > 1), evaluate holds one, prepare and
report none (flows.gpu_slots), so two flow runs never share a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import graphlib
import json
import os
import subprocess
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Completed, State

from flows import check_prefect_api
from flows.dvc_runner import DVC, run_dvc
from flows.experiments import add_experiment_options, threads_per_job
from flows.gpu_slots import gpus_of, holding_gpus
from flows.scheduling import measured_seconds, run_graph
from maskprune.config import Params, find_repo_root, load_params
from maskprune.dvc_yaml import stage_graph
from maskprune.errors import exit_on_user_error
from maskprune.tracking.runs import FLOW_RUN_ENV, PARENT_ENV, pipeline_run

CPU_STAGES = ("prepare", "report")
ONE_PROCESS_STAGES = ("evaluate",)  # measures on one GPU; the others train, as runtime.nproc_per_node says
SKIPPED = "Skipped"  # the state of a stage task that DVC skipped: nothing it depends on changed


def pipeline_changes(root: Path, target: str | None = None) -> dict[str, object]:
    """`dvc status --json` for the pipeline (or `target` and its ancestors): {} when there is nothing to do."""
    args = [DVC, "status", "--json", *(["--with-deps", target] if target else [])]
    done = subprocess.run(args, cwd=root, capture_output=True, text=True, check=True)
    return json.loads(done.stdout or "{}")


def stage_gpus(stage: str, params: Params) -> int:
    """GPU slots the stage's run holds on this machine."""
    family = stage.partition("@")[0]
    if family in CPU_STAGES:
        return 0
    return 1 if family in ONE_PROCESS_STAGES else gpus_of(params.runtime)


def stage_env(stage: str, env: dict[str, str], jobs: int) -> dict[str, str]:
    """The environment of the stage's DVC: with `jobs` > 1, a training stage's torch threads shared
    out among them (one job keeps torch's own choice)."""
    family = stage.partition("@")[0]
    return env if jobs == 1 or family in (*CPU_STAGES, *ONE_PROCESS_STAGES) else threads_per_job(env, jobs)


@task(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE, task_run_name="dvc repro {stage}")
def repro_stage(stage: str, root: str, env: dict[str, str], force: bool = False, gpus: int = 0) -> State | str:
    """Run one stage through DVC, holding `gpus` GPU slots; its output goes to the Prefect log.
    'ran', or a Skipped state whose result is 'skipped'."""
    with holding_gpus(gpus):
        lines = run_dvc(
            ["--wait-for-lock", "repro", "--single-item", *(["--force"] if force else []), stage], root, env
        )
    if any("didn't change, skipping" in ln for ln in lines):
        return Completed(name=SKIPPED, message="DVC: nothing this stage depends on changed", data="skipped")
    return "ran"


@flow(name="maskprune-pipeline", log_prints=True)
def pipeline(stage: str | None = None, force: bool = False, jobs: int = 1) -> dict[str, str]:
    """Run the pipeline (or up to `stage`), `jobs` stages at a time; returns {stage: 'ran' | 'skipped'}."""
    root = find_repo_root()
    params = load_params(root / "params.yaml")
    flow_run_id = str(flow_run.get_id() or "")
    env = {**os.environ, FLOW_RUN_ENV: flow_run_id}
    graph = stage_graph(root, stage)
    futures: dict[str, PrefectFuture] = {}
    idle = not force and not pipeline_changes(root, stage)
    with contextlib.nullcontext() if idle else pipeline_run(params.tracking, root, "prefect", flow_run_id) as parent:
        if parent is not None:
            env[PARENT_ENV] = parent[1]

        def submit(name: str) -> PrefectFuture:
            upstream = [futures[dependency] for dependency in sorted(graph[name])]  # NOTE: the graph's edges
            futures[name] = repro_stage.submit(
                name, str(root), stage_env(name, env, jobs), force, stage_gpus(name, params), wait_for=upstream
            )
            return futures[name]

        run_graph(
            graph,
            submit,
            jobs,
            blocked=lambda name, not_run: bool(graph[name] & not_run),
            seconds=measured_seconds(root),  # NOTE: each stage is expected to take as long as its last run here
        )
        # NOTE: a failed stage raises here, and the parent run fails; a stage it stopped has no future,
        # and comes after it in this order
        outcome = {name: futures[name].result() for name in graphlib.TopologicalSorter(graph).static_order()}
    print(f"pipeline done: {outcome}")
    return outcome


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stage", help="run only this stage and the stages it depends on")
    parser.add_argument("--force", action="store_true", help="rerun stages even if unchanged")
    parser.add_argument("--serve", action="store_true", help="serve as a deployment (needs a server)")
    parser.add_argument("--cron", default="0 3 * * *", help="schedule for --serve (default nightly)")
    add_experiment_options(parser, jobs_help="stages at a time (a training stage gets cores / N torch threads)")
    args = parser.parse_args(argv)
    check_prefect_api()
    if args.serve:
        if not os.environ.get("PREFECT_API_URL"):
            raise SystemExit(
                "maskprune: error: --serve needs a Prefect server: run `prefect server "
                "start` and export PREFECT_API_URL=http://127.0.0.1:4200/api"
            )
        pipeline.serve(
            name="maskprune-scheduled",
            cron=args.cron,
            parameters={"stage": args.stage, "force": args.force, "jobs": args.jobs},
        )
    else:
        pipeline(stage=args.stage, force=args.force, jobs=args.jobs)


if __name__ == "__main__":
    main()
