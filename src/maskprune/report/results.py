"""The pipeline's results per seed, for the report.

A result root is a folder laid out like the repository: params.yaml, metrics/evaluate.json,
plots/evaluate/... and models/<stage>/<variant>/metrics.json. The workspace is the root of its own
seed; the seed sweep (`python -m flows.seeds`) collects the other seeds' roots under
reports/seeds/seed-<n>/. A collected seed counts only if its params match the workspace's in
everything but the seed (and settings that cannot change a result) and it was taught by the very
same teachers (their weights' sha256 in evaluate.json: equal params retrained on another machine
give other weights, and other gains), measured at the same inference precision (evaluate.json's
setup: runtime.amp 'auto' gives bf16 on some hosts, fp32 on others); otherwise it is listed as
excluded, with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from maskprune.errors import MaskpruneError
from maskprune.layout import EVALUATE_FILE, MODELS_DIR, SEEDS_DIR
from maskprune.tracking.runs import flatten

# NOTE: keys that cannot change a result beyond float nondeterminism (or are the seed itself) do not
# make seeds incomparable: how many processes and loader workers ran it, on how many machines (the
# report's decision rules and checks do: they were fixed before the seeds ran)
NEUTRAL_KEYS = (
    "seed",
    "tracking.",
    "runtime.progress",
    "runtime.threads",
    "runtime.loader_workers",
    "runtime.nproc_per_node",
    "runtime.nnodes",
    "runtime.rdzv_endpoint",
    "runtime.max_restarts",
    "runtime.checkpoint_dir",
    "report.confidence",
)
# the models every seed shares by design (they have seeds of their own: teacher.seed, distill.teacher_train)
SHARED_MODELS = ("teacher", "distill_teacher")


@dataclass
class SeedResult:
    """One seed's results, read from its result root."""

    seed: int
    root: Path
    evaluate: dict[str, Any] = field(repr=False)

    def model(self, name: str) -> dict[str, Any] | None:
        """The evaluate report's entry of model `name` (e.g. 'finetune/masked'), or None."""
        return self.evaluate["models"].get(name)

    def stage_metrics(self, stage_folder: str) -> dict[str, Any]:
        """models/<stage_folder>/metrics.json (e.g. 'finetune/masked_kd'), or {} if missing."""
        path = self.root / MODELS_DIR / stage_folder / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def csv(self, relative: str | Path) -> pd.DataFrame | None:
        """The CSV at `relative` under the result root, or None if missing."""
        path = self.root / relative
        return pd.read_csv(path) if path.is_file() else None


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted params keys whose values differ between two params trees (neutral keys ignored)."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(k for k in set(fa) | set(fb) if not k.startswith(NEUTRAL_KEYS) and fa.get(k) != fb.get(k))
    return keys


def shared_weights(evaluate: dict[str, Any]) -> dict[str, str | None]:
    """{model: the sha256 of its weights, None if not recorded} of each model every seed shares."""
    return {name: evaluate["models"].get(name, {}).get("weights_sha256") for name in SHARED_MODELS}


def other_teachers(ours: dict[str, str | None], theirs: dict[str, str | None]) -> str:
    """Why a seed's shared models are not the workspace's ('' if they are the very same weights)."""
    for name in SHARED_MODELS:
        if ours[name] is None or theirs[name] is None:
            return f"{name}'s weights are not recorded in evaluate.json: rerun `dvc repro evaluate` for both seeds"
        if ours[name] != theirs[name]:
            return (
                f"another {name} (weights sha256 {theirs[name][:12]}, the workspace's {ours[name][:12]}): "
                "rerun this seed with `python -m flows.seeds`, which trains it from the workspace's teachers"
            )
    return ""


def inference_precision(evaluate: dict[str, Any]) -> str | None:
    """The precision evaluate ran its forwards in ('fp32', 'bf16'), None where not recorded."""
    return evaluate.get("setup", {}).get("precision", {}).get("inference")


def other_precision(ours: str | None, theirs: str | None) -> str:
    """Why a seed was measured otherwise than the workspace ('' if the same, or either is not recorded:
    results from before the record, whose hosts only their notes tell)."""
    if ours is None or theirs is None or ours == theirs:
        return ""
    return (
        f"its inference ran in {theirs}, the workspace's in {ours} (runtime.amp 'auto' follows the host: "
        "bf16 on a CPU with native bf16): rerun this seed with `python -m flows.seeds` on a host like the "
        "workspace's, or set runtime.amp for every seed"
    )


def read_result(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, evaluate report) of a result root."""
    params_file, evaluate_file = root / "params.yaml", root / EVALUATE_FILE
    if not evaluate_file.is_file():
        raise MaskpruneError(f"{evaluate_file} is missing: run `dvc repro evaluate` first")
    return yaml.safe_load(params_file.read_text()), json.loads(evaluate_file.read_text())


def load_results(root: Path) -> tuple[list[SeedResult], list[dict[str, Any]]]:
    """The workspace's seed and every comparable collected seed; and the excluded ones, with reasons."""
    params, evaluate = read_result(root)
    included = [SeedResult(int(params["seed"]), root, evaluate)]
    ours = shared_weights(evaluate)
    excluded = []
    for folder in sorted((root / SEEDS_DIR).glob("seed-*")):
        try:
            theirs, their_eval = read_result(folder)
        except (MaskpruneError, OSError, ValueError, yaml.YAMLError) as err:
            excluded.append({"folder": str(folder.relative_to(root)), "reason": f"unreadable ({err})"})
            continue
        seed = int(theirs.get("seed", -1))
        reason = ""
        if seed in {r.seed for r in included}:
            reason = f"seed {seed} is already included"
        elif diffs := differing_keys(params, theirs):
            reason = f"params differ from the workspace's: {', '.join(diffs[:6])}{' ...' if len(diffs) > 6 else ''}"
        else:
            reason = other_teachers(ours, shared_weights(their_eval)) or other_precision(
                inference_precision(evaluate), inference_precision(their_eval)
            )
        if reason:
            excluded.append(
                {
                    "folder": str(folder.relative_to(root)),
                    "seed": seed,
                    "reason": reason,
                    "weights": shared_weights(their_eval),
                    "top1": {name: their_eval["models"].get(name, {}).get("top1") for name in SHARED_MODELS},
                    "inference": inference_precision(their_eval),
                }
            )
        else:
            included.append(SeedResult(seed, folder, their_eval))
    return sorted(included, key=lambda r: r.seed), excluded


def per_seed(results: list[SeedResult], value: Callable[[SeedResult], float | None]) -> dict[int, float]:
    """{seed: value} over the seeds where `value` gives a number."""
    out = {}
    for result in results:
        v = value(result)
        if v is not None:
            out[result.seed] = float(v)
    return out
