"""MTO against the baseline, by the per-epoch probe curves of their pre-training runs.

`pretrain_history` reads a pretrain variant's history.csv (probe top-1 and H per mask-carrying
layer per epoch); `mto_row` compares two such runs of one objective. Evaluate's MTO table and the
MTO ablation flow are built from these rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from maskprune.errors import MaskpruneError
from maskprune.layout import PretrainVariant
from maskprune.report.rauc import epochs_to_reach, rauc


def pretrain_history(root: Path, objective: str, loss: str) -> pd.DataFrame:
    """models/pretrain/<objective>-<loss>/history.csv under `root`."""
    path = root / PretrainVariant(objective, loss).folder / "history.csv"
    if not path.is_file():
        raise MaskpruneError(f"{path} is missing: run `dvc repro pretrain@{objective}-{loss}`")
    return pd.read_csv(path)


def mto_row(objective: str, baseline: pd.DataFrame, mto: pd.DataFrame, ranges: list[list[int]]) -> dict[str, Any]:
    """Baseline vs MTO pre-training of one objective, from their per-epoch probe accuracy.

    RAUC for each [E1, E2] range (E2 = 0: the last epoch; None where the baseline gains nothing
    over the range), the epoch at which MTO reaches the baseline's final accuracy (None if it
    never does), and both runs' last-epoch heterogeneity per mask-carrying layer.
    """
    if list(baseline["epoch"]) != list(mto["epoch"]):
        raise MaskpruneError(
            f"pretrain@{objective}-baseline and -mto were trained for different epochs; "
            "rerun both with the same pretrain.train"
        )
    epochs = [float(e) for e in baseline["epoch"]]
    s1, s2 = list(baseline["probe_top1"]), list(mto["probe_top1"])
    row: dict[str, Any] = {
        "objective": objective,
        "epochs": len(epochs),
        "baseline_final_top1": s1[-1],
        "mto_final_top1": s2[-1],
        "mto_minus_baseline_final": s2[-1] - s1[-1],
    }
    for e1, e2 in ranges:
        end = e2 or int(epochs[-1])
        if end > epochs[-1]:
            raise MaskpruneError(
                f"evaluate.rauc_epochs [{e1}, {e2}] goes beyond the {len(epochs)} pre-training "
                "epochs; lower E2 or use 0 for the last epoch"
            )
        try:
            row[f"rauc_{e1}_{end}"] = rauc(epochs, s1, s2, e1, end)
        except ValueError:
            row[f"rauc_{e1}_{end}"] = None
    reached = epochs_to_reach(epochs, s2, s1[-1])
    row["mto_epochs_to_baseline_final"] = reached
    row["mto_epoch_fraction_to_baseline_final"] = None if reached is None else reached / epochs[-1]
    layers = sorted(int(c[2:]) for c in baseline.columns if c.startswith("h_"))
    row["baseline_h"] = [float(baseline[f"h_{i}"].iloc[-1]) for i in layers]
    row["mto_h"] = [float(mto[f"h_{i}"].iloc[-1]) for i in layers]
    return row
