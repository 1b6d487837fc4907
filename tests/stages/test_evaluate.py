"""Evaluate's own outputs: the headline metric, and which folders it removes as undeclared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.evaluate import headline, undeclared_outputs
from tests.conftest import cpu_params


def test_headline_leaves_out_a_throughput_ratio_its_aa_control_calls_noise() -> None:
    models = {
        "steady": {"top1": 0.8, "gmacs": 0.1, "throughput_ratio": 1.5, "aa_ratio": 1.049, "img_per_s": 9.0},
        "noisy": {"top1": 0.7, "gmacs": 0.2, "throughput_ratio": 1.9, "aa_ratio": 0.94, "img_per_s": 9.0},
    }
    assert headline(models) == {
        "steady": {"top1": 0.8, "gmacs": 0.1, "throughput_ratio": 1.5},
        "noisy": {"top1": 0.7, "gmacs": 0.2, "throughput_ratio": None},
    }


def stage_output(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"stage": folder.name}))
    return folder


@pytest.mark.parametrize(
    ("family", "undeclared", "declared"),
    [
        ("prune", "evit-full-0.7", "evit-full-0.5"),  # cpu: keep rates 1.0 and 0.5
        ("pretrain", "simmim-mto", "mae-mto"),  # cpu: MAE only
        ("distill", "evit-cls_tokens_x", "evit-cls_tokens"),
    ],
)
def test_undeclared_outputs_are_matrix_items_params_no_longer_lists(
    tmp_path: Path, family: str, undeclared: str, declared: str
) -> None:
    models = tmp_path / "models" / family
    gone = stage_output(models / undeclared)
    stage_output(models / declared)
    (models / "mine").mkdir()  # no meta.json: not a stage's output
    checkpoint = tmp_path / "checkpoints" / family / undeclared
    checkpoint.mkdir(parents=True)
    (tmp_path / "checkpoints" / family / declared).mkdir(parents=True)
    assert undeclared_outputs(tmp_path, cpu_params()) == [gone, checkpoint]


def test_a_distill_folder_counts_by_the_meta_json_of_its_heads(tmp_path: Path) -> None:
    heads = tmp_path / "models" / "distill" / "vit-cls_old"
    stage_output(heads / "finetune")
    assert undeclared_outputs(tmp_path, cpu_params()) == [heads]
