"""More seeds of the pipeline as a Prefect flow, each in a workspace of its own that survives a stop.

    python -m flows.seeds --seeds 1 2 3 4            # train, evaluate and collect seeds 1 to 4
    python -m flows.seeds --seeds 1 2 3 4 --jobs 2   # two training stages at a time
    python -m flows.seeds --status                   # where each seed stands; runs nothing

Seed n trains in .dvc/tmp/seeds/seed-<n>/: a copy of this repository with `seed: n` that shares its
DVC cache, where `dvc repro` does the work. The stages no seed changes (the data split and the
teachers, which have seeds of their own: `data.seed`, `teacher.seed`) are brought up to date once,
here, before any seed starts; each seed's copy restores them from the cache and only the students
retrain. In a fresh clone, whose cache is empty, that retrains the teachers once for all seeds.
The copy outlives a kill or a reboot: the same command again copies the workspace's current code
and params into it (keeping its outputs, dvc.lock and training checkpoints), DVC skips the stages
that finished, and the stage that was cut off resumes after its last saved epoch.

Up to `--jobs` training stages run at a time, of one seed or of several (a stage starts once the
stages it depends on have finished; the one heading the longest chain of expected seconds first), with
cores / jobs torch threads each; so one seed alone also trains faster with `--jobs 2` on 2 cores.
Each seed's evaluate then runs alone with the workspace's own thread count, so its throughput ratios
are measured as seed 0's are. A finished seed's results (params.yaml, metrics/evaluate.json,
plots/evaluate/ and the stages' metrics.json and history.csv files) are copied once into reports/seeds/seed-<n>/,
and the report stage alone (`dvc repro --single-item report`) rebuilds the report over every seed.
"""

from __future__ import annotations

import argparse
import graphlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import check_prefect_api
from flows.dvc_runner import DVC, run_dvc
from flows.experiments import add_experiment_options, sweep_run, threads_per_job
from flows.gpu_slots import gpus_of, holding_gpus
from flows.scheduling import measured_seconds, run_graph
from maskprune import atomic
from maskprune.checkpoint import train_progress
from maskprune.config import PARAMS_FILE, find_repo_root, load_params
from maskprune.dvc_yaml import LOCK_FILE, expand, stage_graph, stage_order
from maskprune.environment import cpu_name
from maskprune.errors import MaskpruneError, exit_on_user_error
from maskprune.layout import CHECKPOINTS_DIR, EVALUATE_FILE, MODELS_DIR, PLOTS_DIR, SEED_WORKSPACES_DIR, SEEDS_DIR
from maskprune.workspace import copy_workspace, update_workspace

EVALUATE = "evaluate"
REPORT = "report"
SEED_KEY = "seed"  # the top-level params key a seed sweep sets
RUN_FILE = "seed-run.json"  # in a seed's workspace: the process working on it, and what was collected
TIMES_FILE = "sweep.json"  # in a collected seed: how it was run and how long it took


def workspace_of(root: Path, seed: int) -> Path:
    return root / SEED_WORKSPACES_DIR / f"seed-{seed}"


def with_seed(params_text: str, seed: int) -> str:
    """params.yaml's text with its top-level `seed:` set to `seed` (comments kept)."""
    text, count = re.subn(r"(?m)^seed: .*$", f"seed: {seed}", params_text)
    if count != 1:
        raise MaskpruneError(f"{PARAMS_FILE}: expected one top-level `seed:` line; rewrite it with `make profile-cpu`")
    return text


def shared_stages(root: Path) -> list[str]:
    """The stages before evaluate that every seed shares, in a topological order: neither they nor
    any stage upstream of them take the `seed` param (the data split and the teachers)."""
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    params = yaml.safe_load((root / PARAMS_FILE).read_text())
    seeded = {stage.name for stage in expand(dvc, params) if SEED_KEY in stage.params}
    graph = stage_graph(root, EVALUATE)
    shared = []
    for stage in graphlib.TopologicalSorter(graph).static_order():
        if stage in seeded or graph[stage] & seeded:
            seeded.add(stage)
        else:
            shared.append(stage)
    return shared


def prepare_workspace(root: Path, seed: int, shared: list[str]) -> Path:
    """The seed's workspace, created or brought up to date with this one's code and params; the
    `shared` stages (`shared_stages`) and their outputs are this workspace's in either case."""
    ws = workspace_of(root, seed)
    if (ws / ".git").is_dir():
        update_workspace(root, ws, shared)
        subprocess.run([DVC, "checkout", "--quiet", "--force", "--allow-missing", *shared], cwd=ws, check=True)
    else:
        partial = ws.with_name(f"{ws.name}.partial")  # a copy cut off while it was made starts over
        shutil.rmtree(partial, ignore_errors=True)
        copy_workspace(root, partial)
        subprocess.run([DVC, "cache", "dir", "--local", str(root / ".dvc" / "cache")], cwd=partial, check=True)
        # NOTE: the outputs that dvc.lock records, from the cache: the seed-independent stages (data
        # split, teachers) are then up to date; DVC keeps no run-cache for their persistent outputs
        subprocess.run([DVC, "checkout", "--quiet", "--allow-missing"], cwd=partial, check=True)
        partial.rename(ws)
    atomic.write_text(ws / PARAMS_FILE, with_seed((root / PARAMS_FILE).read_text(), seed))
    return ws


def read_run(ws: Path) -> dict:
    path = ws / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_run(ws: Path, **changes: object) -> None:
    atomic.write_json(ws / RUN_FILE, {**read_run(ws), **changes})


def alive(run: dict) -> bool:
    """Whether the process recorded in `run` still runs (its pid and start time both match)."""
    try:
        return abs(psutil.Process(run["pid"]).create_time() - run["started"]) < 1.0
    except (KeyError, psutil.Error):
        return False


def lock_digest(ws: Path) -> str:
    lock = ws / LOCK_FILE
    return hashlib.md5(lock.read_bytes()).hexdigest() if lock.is_file() else ""


def pending_stages(ws: Path) -> list[str]:
    """The stages `dvc repro evaluate` would run in `ws`, in order."""
    done = subprocess.run(
        [DVC, "status", "--json", "--with-deps", EVALUATE], cwd=ws, capture_output=True, text=True, check=True
    )
    changed = {name.rpartition(":")[2] for name in json.loads(done.stdout or "{}")}
    return [stage for stage in stage_order(ws, EVALUATE) if stage in changed]


def last_saved(ws: Path, stage: str) -> str:
    """'prune@evit-full-0.5 saved after epoch 2 of 4; ' from the stage's newest training state, or ''."""
    runs = [p for p in train_progress(ws / CHECKPOINTS_DIR).values() if p.name.partition(" ")[0] == stage]
    return f"{runs[-1]}; " if runs else ""


def where(ws: Path, pending: list[str]) -> str:
    """'<stage> (<its saved progress>; <n> stages to run)': the first pending stage that saved progress
    (the one cut off), else the first pending stage."""
    cut = next((stage for stage in pending if last_saved(ws, stage)), pending[0])
    return f"{cut} ({last_saved(ws, cut)}{len(pending)} stages to run)"


def describe(seed: int, ws: Path, pending: list[str], collected: bool) -> str:
    """One line on what running `seed` now does, its `pending` stages in order: start, resume (where),
    evaluate, collect, or nothing."""
    if not pending:
        return f"seed {seed}: finished" + ("" if collected else ", to collect")
    if not read_run(ws):
        return f"seed {seed}: starting ({len(pending)} stages to run)"
    return f"seed {seed}: resuming at {where(ws, pending)}"


def status_line(root: Path, seed: int) -> str:
    """Where seed `seed` stands: not started, running, cut off, finished or collected."""
    ws = workspace_of(root, seed)
    if not (ws / ".git").is_dir():
        return f"seed {seed}: not started"
    run = read_run(ws)
    if alive(run):
        progress = list(train_progress(ws / CHECKPOINTS_DIR).values())
        saved = f"; last saved: {progress[-1]}" if progress else ""
        return f"seed {seed}: running (pid {run['pid']}){saved}"
    if run.get("collected") == lock_digest(ws) and (root / SEEDS_DIR / f"seed-{seed}").is_dir():
        return f"seed {seed}: done, collected in {SEEDS_DIR}/seed-{seed}"
    pending = pending_stages(ws)
    if not pending:
        return f"seed {seed}: finished, not collected"
    return f"seed {seed}: cut off at {where(ws, pending)}"


def result_files(ws: Path) -> list[Path]:
    """A seed's results in its workspace: params, evaluate report, plot data, stage metrics and histories
    (the report checks every seed's training curves)."""
    files = [
        ws / PARAMS_FILE,
        ws / EVALUATE_FILE,
        *(ws / PLOTS_DIR).rglob("*"),
        *(ws / MODELS_DIR).rglob("metrics.json"),
        *(ws / MODELS_DIR).rglob("history.csv"),
    ]
    return [f for f in files if f.is_file()]


def collect(root: Path, ws: Path, seed: int) -> Path:
    """Copy the seed's results into reports/seeds/seed-<seed>/ (replacing it whole), once per result,
    with sweep.json: the jobs, threads and wall times of the run that finished it."""
    target = root / SEEDS_DIR / f"seed-{seed}"
    digest = lock_digest(ws)
    if read_run(ws).get("collected") == digest and target.is_dir():
        return target
    with atomic.atomic_dir(target) as tmp:
        for path in result_files(ws):
            relative = path.relative_to(ws)
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp / relative)
        atomic.write_json(tmp / TIMES_FILE, read_run(ws).get("times", {}))
    write_run(ws, collected=digest)
    return target


@task(cache_policy=NO_CACHE, task_run_name="shared stages")
def train_shared(root: str, stages: list[str], env: dict[str, str], gpus: int) -> None:
    """The stages every seed shares, in this workspace (DVC skips them when they are up to date)."""
    with holding_gpus(gpus):
        run_dvc(["repro", *stages], root, env)


@task(cache_policy=NO_CACHE, task_run_name="seed {seed}: {stage}")
def train_stage(seed: int, stage: str, ws: str, env: dict[str, str], gpus: int) -> None:
    """One training stage in the seed's workspace (DVC skips it if it is up to date). Stages of one
    workspace run side by side: DVC releases its repository lock while a stage's command runs, and
    the other stage's DVC waits for it while one hashes and records its outputs."""
    with holding_gpus(gpus):
        run_dvc(["--wait-for-lock", "repro", "--single-item", stage], ws, env)


def training_graph(workspaces: dict[int, Path], to_train: dict[int, set[str]]) -> dict[tuple[int, str], set]:
    """{(seed, stage): the (seed, stage) pairs it waits for} over every training stage to run: those
    `dvc status` finds changed and those downstream of them (DVC reruns a stage whose upstream
    outputs changed)."""
    graph: dict[tuple[int, str], set] = {}
    for seed, ws in workspaces.items():
        upstream = {stage: deps for stage, deps in stage_graph(ws, EVALUATE).items() if stage != EVALUATE}
        todo = set(to_train[seed])
        for stage in graphlib.TopologicalSorter(upstream).static_order():
            if upstream[stage] & todo:
                todo.add(stage)
        for stage in todo:
            graph[(seed, stage)] = {(seed, dep) for dep in upstream[stage] & todo}
    return graph


def train_seeds(
    workspaces: dict[int, Path],
    to_train: dict[int, set[str]],
    jobs: int,
    env: dict[str, str],
    gpus: int,
    seconds: dict[str, float],
) -> list[int]:
    """Run every training stage of every seed, `jobs` stages at a time; returns the seeds whose
    training failed (their later stages do not start; the others go on).

    Args:
        workspaces: {seed: its workspace}.
        to_train: {seed: the training stages `dvc status` finds changed in its workspace}.
        jobs: stages at a time, of one seed or several.
        env: the environment of each stage's DVC, threads included.
        gpus: GPU slots each stage holds.
        seconds: {stage: its expected seconds}, the same in every seed.
    """
    graph = training_graph(workspaces, to_train)
    failed = run_graph(
        graph,
        lambda node: train_stage.submit(node[0], node[1], str(workspaces[node[0]]), env, gpus),
        jobs,
        blocked=lambda node, not_run: node[0] in {seed for seed, _ in not_run},
        seconds={node: seconds[node[1]] for node in graph if node[1] in seconds},
    )
    return sorted({seed for seed, _ in failed})


@task(cache_policy=NO_CACHE, task_run_name="evaluate seed {seed}")
def evaluate_seed(seed: int, ws: str, env: dict[str, str]) -> None:
    with holding_gpus(1):
        run_dvc(["repro", EVALUATE], ws, env)


def check_seeds(root: Path, seeds: list[int]) -> None:
    """Distinct seeds other than the workspace's, none of them being run by another process."""
    own = load_params(root / PARAMS_FILE).seed
    if own in seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise MaskpruneError(f"give distinct seeds >= 0 other than the workspace's seed {own}, got {seeds}")
    for seed in seeds:
        run = read_run(workspace_of(root, seed))
        if alive(run) and run["pid"] != os.getpid():
            raise MaskpruneError(f"seed {seed} is being run by process {run['pid']}; wait for it or stop it first")


@flow(name="maskprune-seeds", log_prints=True)
def seed_sweep(seeds: list[int] = [1, 2], jobs: int = 1, report: bool = True) -> list[str]:  # noqa: B006
    """Run, or resume, the pipeline for `seeds`, collect their results, rebuild the report; returns the folders."""
    check_seeds(find_repo_root(), seeds)
    with sweep_run("seeds", "prefect seeds") as (root, _, env, _):
        shared = shared_stages(root)
        print(f"stages every seed shares, brought up to date here once: {', '.join(shared)}")
        gpus = gpus_of(load_params(root / PARAMS_FILE).runtime)
        train_shared(str(root), shared, env, gpus)
        workspaces = {seed: prepare_workspace(root, seed, shared) for seed in seeds}
        whole = {}  # seeds this run trains from their first stage: their times are a seed's whole cost
        pending = {}  # each seed's stages to run: a run times only the work it does
        to_train = {}  # and of those, the ones before evaluate
        for seed, ws in workspaces.items():
            pending[seed] = pending_stages(ws)
            to_train[seed] = set(pending[seed]) - {EVALUATE}
            print(describe(seed, ws, pending[seed], read_run(ws).get("collected") == lock_digest(ws)))
            whole[seed] = not read_run(ws)
            me = psutil.Process()
            write_run(ws, pid=me.pid, started=me.create_time())
            if to_train[seed]:
                # NOTE: recorded before the work, so a run that is killed still names its host (validation
                # and probes run at the host's inference precision: runtime.amp 'auto')
                write_run(ws, cpus=[*read_run(ws).get("cpus", []), cpu_name()])
        training = threads_per_job(env, jobs)
        began = time.perf_counter()
        # NOTE: each stage is expected to take as long as it took here, the workspace's seed
        failed = train_seeds(workspaces, to_train, jobs, training, gpus, measured_seconds(root))
        # NOTE: a run with nothing to train (evaluate's code changed, say) keeps the time of the run
        # that trained the seed
        trained = [seed for seed in seeds if to_train[seed]]
        for seed in trained:
            times = {
                "cpu": cpu_name(),
                "cpus": read_run(workspaces[seed])["cpus"],  # of every run that trained part of the seed
                "jobs": jobs,
                "omp_num_threads": training["OMP_NUM_THREADS"],
                "train_seconds": time.perf_counter() - began,  # the run's: its seeds' stages interleave
                "seeds_trained": len(trained),
                "whole_seed": whole[seed],
            }
            write_run(workspaces[seed], times=times)
        folders = []
        for seed, ws in workspaces.items():
            if seed not in failed:
                began = time.perf_counter()
                evaluate_seed(seed, str(ws), env)
                if pending[seed]:
                    write_run(
                        ws, times={**read_run(ws).get("times", {}), "evaluate_seconds": time.perf_counter() - began}
                    )
                folders.append(collect(root, ws, seed))
            write_run(ws, pid=None)
        if failed:
            raise MaskpruneError(
                f"seeds {failed} failed (see the log above); fix the cause and rerun the same command to resume them"
            )
        if report:
            # NOTE: the report stage alone: the workspace's own seed counts as it stands (its results
            # may come from a commit, with no weights here), and a sweep never retrains it
            run_dvc(["repro", "--single-item", REPORT], str(root), env)
    print(f"seeds {seeds} collected in {SEEDS_DIR}: " + ", ".join(f.name for f in folders))
    return [str(f.relative_to(root)) for f in folders]


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.seeds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 1 2 (with --status: every seed started)")
    add_experiment_options(parser, jobs_help="training stages at a time, of one seed or several")
    parser.add_argument("--no-report", action="store_true", help="collect only; do not rebuild the report")
    parser.add_argument("--status", action="store_true", help="say where each seed stands; run nothing")
    args = parser.parse_args(argv)
    if args.status:
        root = find_repo_root()
        started = [int(p.name.split("-")[1]) for p in (root / SEED_WORKSPACES_DIR).glob("seed-*[0-9]")]
        for seed in args.seeds or sorted(started):
            print(status_line(root, seed))
        return
    check_prefect_api()
    seed_sweep(seeds=args.seeds or [1, 2], jobs=args.jobs, report=not args.no_report)


if __name__ == "__main__":
    main()
