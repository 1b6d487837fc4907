"""MTO's loss ablation as a Prefect flow: each of L_spa, L_e, L_r alone, every pair, all three.

    python -m flows.mto_ablation                            # mae, at the weights in params.yaml
    python -m flows.mto_ablation --objective simmim
    python -m flows.mto_ablation --set pretrain.train.train_limit=20000 --jobs 2
    python -m flows.mto_ablation --losses spa e+r             # some subsets only

The baseline and each non-empty subset of the three losses run as DVC experiments (in temporary
copies; the workspace is left alone) with the same `--set` overrides: the baseline as
`pretrain@<objective>-baseline`, each subset as `pretrain@<objective>-mto` with the weights of the
losses left out set to 0 (an objective that params.yaml's pretrain.objectives leaves out is added to it
for the experiments). The table compares every subset with the baseline by its per-epoch probe
curve: final probe top-1, RAUC over all epochs, the epoch at which it reaches the baseline's final
accuracy, and its last-epoch H per mask-carrying layer. It is printed, written to
reports/sweeps/<sweep>.csv and logged to the sweep's MLflow parent run.
"""

from __future__ import annotations

import argparse
import io
from itertools import combinations
from pathlib import Path

import pandas as pd
from prefect import flow

from flows import check_prefect_api
from flows.experiments import add_experiment_options, experiment_file, experiment_refs, run_sweep
from maskprune.config import MIM_OBJECTIVES, MTOSection, find_repo_root, load_params
from maskprune.errors import MaskpruneError, exit_on_user_error
from maskprune.layout import PretrainVariant
from maskprune.mto_curves import mto_row

LOSSES = ("spa", "e", "r")


def loss_subsets(chosen: list[str] | None = None) -> list[tuple[str, ...]]:
    """Every non-empty subset of MTO's losses (each alone, the pairs, all three), or the `chosen` ones ('e+r')."""
    every = [subset for size in (1, 2, 3) for subset in combinations(LOSSES, size)]
    if chosen is None:
        return every
    picked = [
        tuple(sorted(text.split("+"), key=LOSSES.index)) if set(text.split("+")) <= set(LOSSES) else None
        for text in chosen
    ]
    if None in picked or not picked:
        raise MaskpruneError(f"--losses {' '.join(chosen)}: give subsets of {', '.join(LOSSES)} such as spa or e+r")
    return list(dict.fromkeys(picked))


def subset_sets(subset: tuple[str, ...], weights: MTOSection, extra: list[str]) -> list[str]:
    """`-S` overrides that keep the weights of `subset` and zero the others."""
    for loss in subset:
        if getattr(weights, f"{loss}_weight") <= 0:
            raise MaskpruneError(
                f"pretrain.mto.{loss}_weight is 0 in params.yaml; give it a positive weight to ablate it"
            )
    sets = [
        f"pretrain.mto.{loss}_weight={getattr(weights, f'{loss}_weight') if loss in subset else 0.0}" for loss in LOSSES
    ]
    return sets + list(extra)


def experiment_suffix(subset: tuple[str, ...] | None) -> str:
    return "baseline" if subset is None else "-".join(subset)


def experiment_name(sweep: str, subset: tuple[str, ...] | None) -> str:
    return f"{sweep}-{experiment_suffix(subset)}"


def history_of(root: Path, refs: list[str], name: str, variant: PretrainVariant) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(experiment_file(root, refs, name, (variant.folder / "history.csv").as_posix())))


def ablation_table(
    root: Path, sweep: str, objective: str, weights: MTOSection, subsets: list[tuple[str, ...]]
) -> pd.DataFrame:
    refs = experiment_refs(root)
    baseline = history_of(root, refs, experiment_name(sweep, None), PretrainVariant(objective, "baseline"))
    rows = [
        {
            "experiment": experiment_name(sweep, None),
            "losses": "none",
            "probe_top1": baseline["probe_top1"].iloc[-1],
        }
    ]
    for subset in subsets:
        name = experiment_name(sweep, subset)
        history = history_of(root, refs, name, PretrainVariant(objective, "mto"))
        row = mto_row(objective, baseline, history, [[1, 0]])
        end = int(history["epoch"].iloc[-1])
        rows.append(
            {
                "experiment": name,
                "losses": "+".join(f"L_{loss}" for loss in subset),
                **{f"{loss}_weight": getattr(weights, f"{loss}_weight") if loss in subset else 0.0 for loss in LOSSES},
                "probe_top1": row["mto_final_top1"],
                "minus_baseline": row["mto_minus_baseline_final"],
                "rauc": row[f"rauc_1_{end}"],
                "epochs_to_baseline_final": row["mto_epochs_to_baseline_final"],
                "rec_loss": history["rec_loss"].iloc[-1],
                **{f"h_{i}": h for i, h in enumerate(row["mto_h"])},
            }
        )
    return pd.DataFrame(rows)


@flow(name="maskprune-mto-ablation", log_prints=True)
def mto_ablation(
    objective: str = "mae", sets: list[str] | None = None, jobs: int = 1, losses: list[str] | None = None
) -> list[dict[str, object]]:
    """Run the ablation; returns one row per experiment (also in reports/sweeps/<sweep>.csv)."""
    if objective not in MIM_OBJECTIVES:
        raise MaskpruneError(f"unknown objective {objective!r}; choose from {', '.join(MIM_OBJECTIVES)}")
    pretrain = load_params(find_repo_root() / "params.yaml").pretrain
    weights = pretrain.mto
    subsets = loss_subsets(losses)
    extra = list(sets or [])
    if objective not in pretrain.objectives:  # NOTE: dvc.yaml's matrix only has the stages of listed objectives
        extra.insert(0, f"pretrain.objectives=[{','.join([*pretrain.objectives, objective])}]")
    runs = [(experiment_suffix(None), f"pretrain@{objective}-baseline", extra)]
    runs += [(experiment_suffix(s), f"pretrain@{objective}-mto", subset_sets(s, weights, extra)) for s in subsets]
    sweep, out, table = run_sweep(
        "mto",
        "prefect mto ablation",
        runs,
        jobs,
        lambda root, s: ablation_table(root, s, objective, weights, subsets),
    )
    print(f"MTO ablation {sweep} ({objective}) -> {out}\n{table.to_string(index=False)}")
    return table.to_dict("records")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.mto_ablation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--objective", default="mae", choices=MIM_OBJECTIVES)
    add_experiment_options(parser, "extra params for every experiment, the baseline's too (as `dvc exp run -S`)")
    parser.add_argument(
        "--losses", nargs="+", metavar="SUBSET", help="only these subsets, e.g. spa e+r (default: all 7)"
    )
    args = parser.parse_args(argv)
    check_prefect_api()
    mto_ablation(objective=args.objective, sets=args.sets, jobs=args.jobs, losses=args.losses)


if __name__ == "__main__":
    main()
