"""DVC's tables on one screen: hand-made `--json` inputs, then the real commands on the smoke run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from maskprune.show import WIDTH, dag_lines, experiment_table, metrics_tables
from tests.conftest import subprocess_env


def verdicts(word: str) -> dict:
    return {"metrics/verdicts.json": {"data": {"A": {"word": word, "masked - full": {"mean": -0.01, "p_holm": 0.2}}}}}


def test_metrics_are_one_row_per_model_and_one_per_claims_test() -> None:
    shown = {
        "": {
            "data": {
                "metrics/headline.json": {"data": {"teacher": {"top1": 0.9, "gmacs": 0.14, "throughput_ratio": 0.63}}},
                **verdicts("inconclusive"),
            }
        }
    }
    models, claims = metrics_tables(shown)
    assert models.to_dict("index") == {"teacher": {"top1": 0.9, "gmacs": 0.14, "throughput_ratio": 0.63}}
    assert claims.reset_index().to_dict("records") == [
        {"claim": "A", "word": "inconclusive", "test": "masked - full", "mean": -0.01, "p_holm": 0.2}
    ]


def test_experiments_show_only_the_params_that_differ_and_each_claims_word() -> None:
    def rev(name: str | None, rev: str, keep: float, word: str) -> dict:
        params = {"params.yaml": {"data": {"seed": 0, "prune": {"keep_rates": [1.0, keep]}}}}
        return {"rev": rev, "name": name, "data": {"params": params, "metrics": verdicts(word), "deps": {}}}

    sha = "0123456789abcdef0123456789abcdef01234567"
    shown = [{**rev(None, "workspace", 0.5, "inconclusive"), "experiments": None}]
    shown.append(
        {**rev(None, sha, 0.5, "inconclusive"), "experiments": [{"revs": [rev("tighter", "f" * 40, 0.7, "x")]}]}
    )
    table = experiment_table(shown)
    assert table.reset_index().to_dict("records") == [
        {"experiment": "workspace", "prune.keep_rates": "[1.0, 0.5]", "A.word": "inconclusive"},
        {"experiment": "0123456", "prune.keep_rates": "[1.0, 0.5]", "A.word": "inconclusive"},
        {"experiment": "tighter", "prune.keep_rates": "[1.0, 0.7]", "A.word": "x"},
    ]


def test_the_dag_is_a_line_per_stage_family_with_its_variants_below() -> None:
    graph = {
        "prepare": set(),
        "teacher": {"prepare"},
        "prune@evit-full-0.5": {"teacher", "prepare"},
        "prune@dynamicvit-full-0.5": {"teacher", "prepare"},
        "report": {"prune@evit-full-0.5", "prune@dynamicvit-full-0.5"},
    }
    assert dag_lines(graph) == [
        "prepare",
        "teacher  <-  prepare",
        "prune  <-  prepare, teacher",
        "    @ dynamicvit-full-0.5, evit-full-0.5",
        "report  <-  prune",
    ]


@pytest.mark.integration
@pytest.mark.parametrize("what", ["metrics", "experiments", "dag"])
def test_each_fits_one_screen_on_the_smoke_run(smoke_repo: Path, what: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "maskprune.show", what],
        cwd=smoke_repo,
        env=subprocess_env(PYTHONPATH="src"),
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert len(lines) > 2 and max(map(len, lines)) <= WIDTH
    dvc = {"metrics": ["metrics", "show"], "experiments": ["exp", "show"], "dag": ["dag"]}[what]
    theirs = subprocess.run([sys.executable, "-m", "dvc", *dvc], cwd=smoke_repo, capture_output=True, text=True)
    assert max(map(len, theirs.stdout.splitlines())) > WIDTH  # NOTE: what this is for
