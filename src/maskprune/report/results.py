"""The pipeline's results per seed, for the report.

A result root is a folder laid out like the repository: params.yaml, metrics/evaluate.json,
plots/evaluate/... and models/<stage>/<variant>/metrics.json. The workspace is the root of its own
seed; the seed sweep (`python -m flows.seeds`) collects the other seeds' roots under
reports/seeds/seed-<n>/. A collected seed counts only if its params match the workspace's in
everything but the seed (and settings that cannot change a result) and it was taught by the very
same teachers (their weights' sha256 in evaluate.json: equal params retrained on another machine
give other weights, and other gains), trained and measured at the same precision (runtime.amp 'auto'
gives bf16 inference on some hosts, fp32 on others: evaluate.json's setup records evaluate's, each
training epoch its own in history.csv, so a stage resumed on another host shows); otherwise it is
listed as excluded, with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from maskprune.config import PARAMS_FILE
from maskprune.dvc_yaml import expand, read_lock
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
REPORT_STAGE = "report"  # the stage that reads the results: its params are the report's, not theirs


@dataclass
class SeedResult:
    """One seed's results, read from its result root."""

    seed: int
    root: Path
    evaluate: dict[str, Any] = field(repr=False)
    precision: str | None = None  # precision_summary of what it recorded

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


def stale_params(root: Path, params: dict[str, Any]) -> list[str]:
    """What `root`'s results were made with that its params.yaml no longer says: for each key that a
    stage of its pipeline ran with by its dvc.lock (the report aside), 'key: recorded -> now' where
    the two differ (neutral keys aside). [] without dvc.yaml or dvc.lock (results copied in)."""
    pipeline, lock = root / "dvc.yaml", read_lock(root).get("stages", {})
    if not pipeline.is_file() or not lock:
        return []
    now = flatten(params)
    stale = {}
    for stage in expand(yaml.safe_load(pipeline.read_text()), params):
        if stage.name == REPORT_STAGE or stage.name not in lock:
            continue  # NOTE: a stage never run leaves evaluate's inputs missing, which read_result reports
        for key, value in flatten(lock[stage.name].get("params", {}).get(PARAMS_FILE, {})).items():
            if not key.startswith(NEUTRAL_KEYS) and not _same(value, now.get(key)):
                stale[key] = f"{key}: {value} -> {now.get(key)}"
    return [stale[key] for key in sorted(stale)]


def _same(recorded: Any, now: Any) -> bool:
    """Equal params values; DVC writes 1e-05 where PyYAML reads a string."""
    if recorded == now:
        return True
    try:
        return float(recorded) == float(now)
    except (TypeError, ValueError):
        return False


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


def recorded_precisions(root: Path, evaluate: dict[str, Any]) -> dict[str, dict[str, set[str]]]:
    """{'training' | 'inference': {'fp32' | 'bf16': where}} over what a result root recorded: evaluate's
    forwards (evaluate.json) and every training epoch of the stages evaluate read (history.csv's `*_bf16`
    columns; where: 'evaluate' or the stage's folder under models/). A folder no evaluated model comes
    from (one a removed matrix item left behind) is not part of the result. Empty where nothing is
    recorded."""
    found: dict[str, dict[str, set[str]]] = {"training": {}, "inference": {}}
    if inference := evaluate.get("setup", {}).get("precision", {}).get("inference"):
        found["inference"].setdefault(inference, set()).add("evaluate")
    evaluated = evaluate.get("models", {})  # e.g. 'teacher', 'distill/vit-cls/finetune'
    for path in sorted((root / MODELS_DIR).rglob("history.csv")):
        where = path.parent.relative_to(root / MODELS_DIR).as_posix()
        if not any(name == where or name.startswith(f"{where}/") for name in evaluated):
            continue
        history = pd.read_csv(path, usecols=lambda column: column.endswith("_bf16"))  # the record alone
        for kind, by_name in found.items():
            if (column := f"{kind}_bf16") in history:
                for bf16 in history[column].dropna().unique():
                    by_name.setdefault("bf16" if bf16 else "fp32", set()).add(where)
    return {kind: by_name for kind, by_name in found.items() if by_name}


def precision_summary(found: dict[str, dict[str, set[str]]]) -> str | None:
    """One line for `recorded_precisions`: 'fp32', 'training fp32, inference bf16', or which stages ran
    at which precision where a seed mixes them; None where nothing is recorded."""
    if not found:
        return None
    if any(len(by_name) > 1 for by_name in found.values()):
        return "mixed: " + "; ".join(
            f"{kind} {name} in {', '.join(sorted(where)[:3])}{' ...' if len(where) > 3 else ''}"
            for kind, by_name in found.items()
            if len(by_name) > 1  # the kind that is mixed
            for name, where in sorted(by_name.items())
        )
    names = {kind: next(iter(by_name)) for kind, by_name in found.items()}
    if len(set(names.values())) == 1:
        return next(iter(names.values()))
    return ", ".join(f"{kind} {name}" for kind, name in names.items())


def other_precision(ours: dict[str, dict[str, set[str]]], theirs: dict[str, dict[str, set[str]]]) -> str:
    """Why a seed ran otherwise than the workspace (`recorded_precisions` of each): it mixes precisions,
    or one it recorded is not the workspace's. '' if neither: kinds that only one side recorded
    (results from before a record, whose hosts only their notes tell) compare with nothing."""
    mixed = any(len(by_name) > 1 for by_name in theirs.values())
    if not mixed and all(set(ours[kind]) == set(theirs[kind]) for kind in ours.keys() & theirs.keys()):
        return ""
    return (
        f"it ran in {precision_summary(theirs)}, the workspace in {precision_summary(ours) or 'not recorded'} "
        "(runtime.amp 'auto' follows the host: bf16 "
        "inference on a CPU with native bf16, bf16 on a GPU): rerun this seed with `python -m flows.seeds` "
        "on a host like the workspace's, or set runtime.amp for every seed"
    )


def read_result(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, evaluate report) of a result root."""
    params_file, evaluate_file = root / PARAMS_FILE, root / EVALUATE_FILE
    if not evaluate_file.is_file():
        raise MaskpruneError(f"{evaluate_file} is missing: run `dvc repro evaluate` first")
    return yaml.safe_load(params_file.read_text()), json.loads(evaluate_file.read_text())


def load_results(root: Path) -> tuple[list[SeedResult], list[dict[str, Any]]]:
    """The workspace's seed and every comparable collected seed; and the excluded ones, with reasons."""
    params, evaluate = read_result(root)
    if stale := stale_params(root, params):
        raise MaskpruneError(
            f"{root / PARAMS_FILE} changed since its results were made ({'; '.join(stale[:4])}"
            f"{' ...' if len(stale) > 4 else ''}): run `dvc repro` before the report"
        )
    ours, our_precision = shared_weights(evaluate), recorded_precisions(root, evaluate)
    included = [SeedResult(int(params["seed"]), root, evaluate, precision_summary(our_precision))]
    excluded = []
    for folder in sorted((root / SEEDS_DIR).glob("seed-*")):
        try:
            theirs, their_eval = read_result(folder)
        except (MaskpruneError, OSError, ValueError, yaml.YAMLError) as err:
            excluded.append({"folder": str(folder.relative_to(root)), "reason": f"unreadable ({err})"})
            continue
        seed = int(theirs.get("seed", -1))
        their_precision = recorded_precisions(folder, their_eval)
        their_summary = precision_summary(their_precision)
        reason = ""
        if seed in {r.seed for r in included}:
            reason = f"seed {seed} is already included"
        elif diffs := differing_keys(params, theirs):
            reason = f"params differ from the workspace's: {', '.join(diffs[:6])}{' ...' if len(diffs) > 6 else ''}"
        else:
            reason = other_teachers(ours, shared_weights(their_eval)) or other_precision(our_precision, their_precision)
        if reason:
            excluded.append(
                {
                    "folder": str(folder.relative_to(root)),
                    "seed": seed,
                    "reason": reason,
                    "weights": shared_weights(their_eval),
                    "top1": {name: their_eval["models"].get(name, {}).get("top1") for name in SHARED_MODELS},
                    "precision": their_summary,
                }
            )
        else:
            included.append(SeedResult(seed, folder, their_eval, their_summary))
    return sorted(included, key=lambda r: r.seed), excluded


def per_seed(results: list[SeedResult], value: Callable[[SeedResult], float | None]) -> dict[int, float]:
    """{seed: value} over the seeds where `value` gives a number."""
    out = {}
    for result in results:
        v = value(result)
        if v is not None:
            out[result.seed] = float(v)
    return out
