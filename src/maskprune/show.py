"""The pipeline's metrics, experiments and stage graph, each on one screen.

    python -m maskprune.show metrics       # (make metrics) per model its top-1, GMACs and speed-up; per claim its word
    python -m maskprune.show experiments   # (make exps) per experiment the params it changed and each claim's word
    python -m maskprune.show dag           # (make dag) the stage families, in order, and the families each needs

DVC's own tables put every key in a column of its own: `dvc metrics show` one per model and metric,
`dvc exp show` one per parameter and dependency, `dvc dag` a box per stage side by side, thousands
of characters wide. These read the same data from DVC (`--json`, `--dot`) and lay it out long.
"""

from __future__ import annotations

import argparse
import graphlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

from maskprune.config import find_repo_root
from maskprune.dvc_yaml import stage_graph
from maskprune.errors import MaskpruneError, exit_on_user_error
from maskprune.layout import HEADLINE_FILE, VERDICTS_FILE
from maskprune.tracking.runs import flatten

WIDTH = 120  # NOTE: the widest line any of these prints, wider columns are cut with an ellipsis


def dvc_json(root: Path, *args: str) -> Any:
    """`dvc <args> --json` parsed; one line naming DVC's error if it fails."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args, "--json"], cwd=root, capture_output=True, text=True)
    if done.returncode:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MaskpruneError(f"dvc {' '.join(args)} failed ({reason}); run it in the repository root")
    return json.loads(done.stdout or "{}")


def metrics_tables(shown: dict[str, Any]) -> list[pd.DataFrame]:
    """From `dvc metrics show --json`: the models (rows) by metric, then the claims by test."""
    files = shown.get("", {}).get("data", {})
    headline = files.get(str(HEADLINE_FILE), {}).get("data", {})
    verdicts = files.get(str(VERDICTS_FILE), {}).get("data", {})
    models = pd.DataFrame.from_dict(headline, orient="index").rename_axis("model")
    rows = [
        {
            "claim": claim,
            "word": tests.get("word", ""),
            "test": test,
            "mean": row.get("mean"),
            "p_holm": row.get("p_holm"),
        }
        for claim, tests in verdicts.items()
        for test, row in tests.items()
        if isinstance(row, dict)
    ]
    return [models, pd.DataFrame(rows).set_index("claim") if rows else pd.DataFrame()]


def experiment_table(shown: list[dict[str, Any]]) -> pd.DataFrame:
    """From `dvc exp show --json`: per commit and experiment, the params that differ between any two of
    them and each claim's word (the data dependency is left out: DVC names an absolute path differently
    in the workspace and in a commit, which `--only-changed` takes for a change)."""
    rows = []
    for commit in shown:
        revisions = [commit] + [rev for exp in commit.get("experiments") or [] for rev in exp.get("revs", [])]
        for rev in revisions:
            data = rev.get("data") or {}
            params = flatten(data.get("params", {}).get("params.yaml", {}).get("data", {}))
            verdicts = data.get("metrics", {}).get(str(VERDICTS_FILE), {}).get("data", {})
            words = {f"{claim}.word": tests.get("word", "") for claim, tests in verdicts.items()}
            name = rev.get("name") or rev.get("rev", "")
            rows.append({"experiment": name[:7] if len(name) == 40 else name, **params, **words})  # NOTE: a sha
    table = pd.DataFrame(rows).set_index("experiment")
    params = [c for c in table.columns if not c.endswith(".word")]
    changed = [c for c in params if table[c].astype(str).nunique() > 1]
    return table[changed + [c for c in table.columns if c.endswith(".word")]]


def family(stage: str) -> str:
    """'prune@evit-full-0.5' -> 'prune'."""
    return stage.partition("@")[0]


def dag_lines(graph: dict[str, set[str]]) -> list[str]:
    """Per stage family in pipeline order: the family and the families it needs, then its variants."""
    families: dict[str, list[str]] = {}
    for stage in graphlib.TopologicalSorter(graph).static_order():
        families.setdefault(family(stage), []).append(stage)
    lines = []
    for name, stages in families.items():
        needs = sorted({family(dep) for stage in stages for dep in graph[stage]} - {name}, key=list(families).index)
        lines.append(f"{name}  <-  {', '.join(needs)}" if needs else name)
        variants = sorted(stage.partition("@")[2] for stage in stages if "@" in stage)
        if variants:
            lines += textwrap.wrap(
                f"@ {', '.join(variants)}",
                WIDTH,
                initial_indent="    ",
                subsequent_indent="      ",
                break_on_hyphens=False,
            )
    return lines


def show(what: str, root: Path) -> str:
    """The table (or graph) `what` of the repository at `root`, as text at most `WIDTH` wide."""
    if what == "dag":
        return "\n".join(dag_lines(stage_graph(root)))
    frames = (
        metrics_tables(dvc_json(root, "metrics", "show"))
        if what == "metrics"
        else [experiment_table(dvc_json(root, "exp", "show"))]
    )
    return "\n\n".join(frame.to_string(max_colwidth=40, line_width=WIDTH) for frame in frames if not frame.empty)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskprune.show", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("metrics", "experiments", "dag"))
    print(show(parser.parse_args(argv).what, find_repo_root()))


if __name__ == "__main__":
    main()
