"""DVC stage `report`: the seeds' results -> reports/report.{md,html}, reports/figures/, reports/summary.json.

Its MLflow run holds the report and its figures (the pipeline's parent run gets them too), one tag
per section verdict and one per claim's word (`claim.A`: reproduced, ...), and the best pruned
model, registered with an alias (when its weights are here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maskprune.checkpoint import WEIGHTS_FILE, read_meta
from maskprune.cli import run_stage
from maskprune.config import Params
from maskprune.layout import HEADLINE_FILE, MODELS_DIR, REPORT_DIR, REPORT_FIGURES_DIR, VERDICTS_FILE
from maskprune.report.build import write_report
from maskprune.runtime import Runtime
from maskprune.tracking.provenance import file_md5
from maskprune.tracking.registry import ModelToRegister
from maskprune.tracking.runs import StageRecord


def compute(params: Params, root: Path, runtime: Runtime) -> None:
    report = write_report(root, params)
    print(f"report: seeds {report.seeds} -> {REPORT_DIR / 'report.html'}, {REPORT_DIR / 'report.md'}")
    for section in report.sections:
        print(f"report: {section.key}. {section.verdict}")


def best_pruned_model(params: Params, root: Path, summary: dict[str, Any]) -> ModelToRegister | None:
    """The best pruned model of `summary` to register, or None (and one line why) when there is none
    (every keep rate is 1.0), it fails its check (not clearly above chance on every seed: no champion),
    or its weights are not here: the workspace's results then come from a commit, as in a fresh clone
    after a seed sweep."""
    name, check = summary["best_pruned"], summary["best_pruned_check"]
    if name is None:
        print("report: no pruned model (every prune keep rate is 1.0), so none is registered")
        return None
    if not check["passed"]:
        print(
            f"report: the best pruned model, {name}, is not registered: it fails '{check['name']}' ({check['detail']})"
        )
        return None
    folder = root / MODELS_DIR / name
    if not (folder / WEIGHTS_FILE).is_file():
        print(f"report: {folder.relative_to(root)} has no weights here, so it is not registered; `dvc repro` trains it")
        return None
    meta = read_meta(folder)
    size = meta["model"]["img_size"]
    description, tags = model_card(name, meta, summary, root)
    return ModelToRegister(
        folder,
        params.tracking.registered_model,
        params.tracking.model_alias,
        (meta["in_chans"], size, size),
        meta["num_classes"],
        weights_md5=file_md5(folder / WEIGHTS_FILE),
        description=description,
        tags=tags,
    )


def model_card(name: str, meta: dict[str, Any], summary: dict[str, Any], root: Path) -> tuple[str, dict[str, str]]:
    """The registered version's description and tags: which model it is, and what evaluate measured of
    these weights (metrics/headline.json of this workspace, whose seed trained them)."""
    measured = json.loads((root / HEADLINE_FILE).read_text()).get(name) if (root / HEADLINE_FILE).is_file() else None
    stage, seed = meta.get("stage", name), meta.get("seed")
    tags = {"model": name, "stage": stage, "seed": str(seed), "report_seeds": ",".join(map(str, summary["seeds"]))}
    description = (
        f"{name}, trained by stage {stage} (seed {seed}): the report's best pruned model over seeds "
        f"{tags['report_seeds']}."
    )
    if measured is None:
        return f"{description} evaluate has not measured these weights here.", tags
    ratio = measured["throughput_ratio"]
    tags |= {"test_top1": f"{measured['top1']:.4f}", "gmacs": f"{measured['gmacs']:.4g}"}
    if ratio is None:
        speed = "no throughput ratio (its A/A control said the timing was noise)"
    else:
        speed, tags["throughput_ratio"] = f"{ratio:.2f}x the unpruned student's throughput", f"{ratio:.3f}"
    return f"{description} Test top-1 {measured['top1']:.2%}, {measured['gmacs']:.4g} GMACs per image, {speed}.", tags


def record(params: Params, root: Path) -> StageRecord:
    out = root / REPORT_DIR
    summary = json.loads((out / "summary.json").read_text())
    files = [
        out / "report.html",
        out / "report.md",
        out / "summary.json",
        root / VERDICTS_FILE,
        root / REPORT_FIGURES_DIR,
    ]
    return StageRecord(
        stage="report",
        params={"seed": params.seed, "report": params.report.model_dump()},
        metrics={"seeds": len(summary["seeds"]), "excluded_seeds": len(summary["excluded"])},
        artifacts=files,
        parent_artifacts=files,
        register=best_pruned_model(params, root, summary),
        tags={f"verdict.{key}": text[:4000] for key, text in summary["verdicts"].items()}
        | {f"claim.{key}": claim["word"] for key, claim in summary["claims"].items()}
        | {"seeds": ",".join(map(str, summary["seeds"])), "best_pruned": summary["best_pruned"] or "none"},
    )


if __name__ == "__main__":
    run_stage("report", compute, record)
