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
from itertools import product
from pathlib import Path

import pandas as pd
from prefect import flow

from flows import check_prefect_api
from flows.experiments import add_experiment_options, experiment_file, experiment_refs, run_sweep
from maskprune.errors import MaskpruneError, exit_on_user_error
from maskprune.layout import FINETUNE_DIR
from maskprune.masking import CRITERIA

STAGE = "finetune@masked_kd"
METRICS = (FINETUNE_DIR / "masked_kd" / "metrics.json").as_posix()
KEEP_RATIOS = (1.0, 0.75, 0.5, 0.25)
MAIN_CRITERIA = ("student_attn", "random")
COLUMNS = (
    "val_top1",
    "teacher_gmacs_per_image",
    "teacher_gmacs_ratio",
    "teacher_img_per_s",
    "teacher_throughput_ratio",
    "train_tflops",
    "wall_seconds",
)


def combinations(keep_ratios: list[float], criteria: list[str]) -> list[tuple[float, str]]:
    """(teacher keep, criterion) pairs; keep 1.0 once (the teacher sees every patch)."""
    bad = [c for c in criteria if c not in CRITERIA]
    if bad:
        raise MaskpruneError(f"unknown criterion {bad[0]!r}; choose from {', '.join(CRITERIA)}")
    if not keep_ratios or not criteria or any(not 0.0 < k <= 1.0 for k in keep_ratios):
        raise MaskpruneError("give at least one criterion and keep ratios in (0, 1]")
    pairs = [(1.0, "none")] if 1.0 in keep_ratios else []
    return pairs + [(k, c) for k, c in product(keep_ratios, criteria) if k != 1.0]


def experiment_suffix(keep: float, criterion: str) -> str:
    return f"{criterion.replace('_', '')}-k{round(keep * 100):03d}"


def experiment_name(sweep: str, keep: float, criterion: str) -> str:
    return f"{sweep}-{experiment_suffix(keep, criterion)}"


def experiment_sets(keep: float, criterion: str, extra: list[str]) -> list[str]:
    sets = [f"finetune.masked_kd.teacher_keep={keep}"]
    if criterion != "none":
        sets.append(f"finetune.masked_kd.criterion={criterion}")
    return sets + list(extra)


def sweep_table(root: Path, sweep: str, pairs: list[tuple[float, str]]) -> pd.DataFrame:
    refs = experiment_refs(root)
    rows = []
    for keep, criterion in pairs:
        name = experiment_name(sweep, keep, criterion)
        metrics = json.loads(experiment_file(root, refs, name, METRICS))
        rows.append(
            {
                "experiment": name,
                "teacher_keep": keep,
                "criterion": criterion,
                **{c: metrics.get(c) for c in COLUMNS},
            }
        )
    return pd.DataFrame(rows)


@flow(name="maskprune-maskedkd-sweep", log_prints=True)
def maskedkd_sweep(
    keep_ratios: list[float] | None = None,
    criteria: list[str] | None = None,
    sets: list[str] | None = None,
    jobs: int = 1,
) -> list[dict[str, object]]:
    """Run the sweep (default: KEEP_RATIOS x MAIN_CRITERIA); one row per experiment.

    The rows are also written to reports/sweeps/<sweep>.csv.
    """
    keep_ratios = list(KEEP_RATIOS) if keep_ratios is None else keep_ratios
    criteria = list(MAIN_CRITERIA) if criteria is None else criteria
    pairs = combinations(keep_ratios, criteria)
    runs = [(experiment_suffix(keep, c), STAGE, experiment_sets(keep, c, sets or [])) for keep, c in pairs]
    sweep, out, table = run_sweep("mkd", "prefect sweep", runs, jobs, lambda root, s: sweep_table(root, s, pairs))
    print(f"MaskedKD sweep {sweep} -> {out}\n{table.to_string(index=False)}")
    return table.to_dict("records")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--keep", type=float, nargs="+", default=list(KEEP_RATIOS), help="teacher keep ratios")
    parser.add_argument("--criteria", nargs="+", default=list(MAIN_CRITERIA), choices=CRITERIA)
    parser.add_argument("--ablation", action="store_true", help="add the teacher_attn and bottom_k criteria")
    add_experiment_options(parser, "extra params for every experiment (as `dvc exp run -S`)")
    args = parser.parse_args(argv)
    check_prefect_api()
    criteria = list(dict.fromkeys([*args.criteria, *(("teacher_attn", "bottom_k") if args.ablation else ())]))
    maskedkd_sweep(keep_ratios=args.keep, criteria=criteria, sets=args.sets, jobs=args.jobs)


if __name__ == "__main__":
    main()
