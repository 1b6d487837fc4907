"""More seeds of the pipeline as a Prefect flow: one DVC experiment per seed, its results collected.

    python -m flows.seeds                      # seeds 1 and 2 (with the workspace's seed 0: three)
    python -m flows.seeds --seeds 1 2 3 --jobs 2

Each seed runs `dvc exp run --temp -S seed=<n> evaluate` in a temporary copy (the workspace is left
alone). The data split and the teacher have seeds of their own (`data.seed`, `teacher.seed`), so
only the students retrain. The seed's results (params.yaml, metrics/evaluate.json, plots/evaluate/
and the stages' metrics.json files) are copied from the experiment's commit into
reports/seeds/seed-<n>/, and `dvc repro report` then rebuilds the report over every seed.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from prefect import flow

from flows import check_prefect_api
from flows.experiments import (
    add_experiment_options,
    experiment_file,
    experiment_refs,
    repro,
    run_experiment,
    run_queue,
    sweep_run,
)
from maskprune import atomic
from maskprune.config import PARAMS_FILE, find_repo_root, load_params
from maskprune.errors import MaskpruneError, exit_on_user_error
from maskprune.layout import EVALUATE_FILE, MODELS_DIR, PLOTS_DIR, SEEDS_DIR

COLLECTED = (PARAMS_FILE, EVALUATE_FILE.as_posix(), PLOTS_DIR.as_posix())


def result_files(root: Path, ref: str) -> list[str]:
    """The files of a seed's results in commit `ref`: params, evaluate report, plot data, stage metrics."""
    listed = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", ref, "--", *COLLECTED, MODELS_DIR.as_posix()],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [f for f in listed if not f.startswith(f"{MODELS_DIR}/") or f.endswith("/metrics.json")]


def collect(root: Path, refs: list[str], name: str, seed: int) -> Path:
    """Copy experiment `name`'s results into reports/seeds/seed-<seed>/ (replacing it whole)."""
    ref = next((r for r in refs if r.endswith(f"/{name}")), None)
    if ref is None:
        raise MaskpruneError(f"experiment {name} left no result; see `dvc exp show` and `dvc queue logs`")
    target = root / SEEDS_DIR / f"seed-{seed}"
    with atomic.atomic_dir(target) as tmp:
        for relative in result_files(root, ref):
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp / relative).write_text(experiment_file(root, refs, name, relative))
    return target


@flow(name="maskprune-seeds", log_prints=True)
def seed_sweep(seeds: list[int] = [1, 2], jobs: int = 1, report: bool = True) -> list[str]:  # noqa: B006
    """Run the pipeline for `seeds`, collect their results, rebuild the report; returns the folders."""
    own = load_params(find_repo_root() / "params.yaml").seed
    if own in seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise MaskpruneError(f"give distinct seeds >= 0 other than the workspace's seed {own}, got {seeds}")
    with sweep_run("seeds", "prefect seeds") as (root, sweep, env, _):
        names = {seed: f"{sweep}-seed{seed}" for seed in seeds}
        for seed, name in names.items():
            run_experiment(name, "evaluate", [f"seed={seed}"], str(root), env, queue=jobs > 1)
        if jobs > 1:
            run_queue(str(root), env, jobs)
        refs = experiment_refs(root)
        folders = [collect(root, refs, name, seed) for seed, name in names.items()]
        if report:
            repro("report", str(root), env)
    print(f"seeds {seeds} collected in {SEEDS_DIR}: " + ", ".join(f.name for f in folders))
    return [str(f.relative_to(root)) for f in folders]


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.seeds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    add_experiment_options(parser)
    parser.add_argument("--no-report", action="store_true", help="collect only; do not run `dvc repro report`")
    args = parser.parse_args(argv)
    check_prefect_api()
    seed_sweep(seeds=args.seeds, jobs=args.jobs, report=not args.no_report)


if __name__ == "__main__":
    main()
