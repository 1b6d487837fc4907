"""Which seeds the report may aggregate: their params may differ only where no result can change."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from maskprune.layout import SEEDS_DIR
from maskprune.report.results import differing_keys, load_results


def test_seeds_compare_only_on_keys_that_change_results() -> None:
    a = {"seed": 0, "tracking": {"uri": ""}, "prune": {"keep_rates": [0.5]}, "runtime": {"progress": "auto"}}
    b = {
        "seed": 1,
        "tracking": {"uri": "http://x"},
        "prune": {"keep_rates": [0.7]},
        "runtime": {"progress": "never"},
    }
    assert differing_keys(a, b) == ["prune.keep_rates"]
    assert differing_keys(a, {**a, "seed": 5}) == []
    # how many processes, machines and loader workers ran a seed, and a seed collected before those keys existed
    launched = {
        **a,
        "runtime": {"progress": "auto", "nproc_per_node": 8, "nnodes": 2, "loader_workers": 6, "amp": "bf16"},
    }
    assert differing_keys(a, launched) == ["runtime.amp"]


def _seed_root(
    root: Path,
    seed: int,
    teacher: str | None,
    distill_teacher: str = "d" * 64,
    inference: str | None = None,
) -> Path:
    models = {"teacher": {"top1": 0.9}, "distill_teacher": {"top1": 0.8, "weights_sha256": distill_teacher}}
    if teacher is not None:
        models["teacher"]["weights_sha256"] = teacher
    setup = {} if inference is None else {"precision": {"training": "fp32", "inference": inference}}
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "evaluate.json").write_text(json.dumps({"models": models, "setup": setup}))
    (root / "params.yaml").write_text(yaml.safe_dump({"seed": seed, "prune": {"keep_rates": [0.5]}}))
    return root


def test_a_seed_taught_by_other_teacher_weights_is_excluded(tmp_path: Path) -> None:
    root = _seed_root(tmp_path, 0, "a" * 64)
    _seed_root(root / SEEDS_DIR / "seed-1", 1, "a" * 64)
    _seed_root(root / SEEDS_DIR / "seed-2", 2, "b" * 64)  # the same params, retrained elsewhere
    _seed_root(root / SEEDS_DIR / "seed-3", 3, None)  # collected before weights were recorded
    _seed_root(root / SEEDS_DIR / "seed-4", 4, "a" * 64, distill_teacher="e" * 64)
    included, excluded = load_results(root)
    assert [r.seed for r in included] == [0, 1]
    reasons = {x["seed"]: x["reason"] for x in excluded}
    assert reasons[2].startswith("another teacher (weights sha256 bbbbbbbbbbbb, the workspace's aaaaaaaaaaaa)")
    assert reasons[3].startswith("teacher's weights are not recorded")
    assert reasons[4].startswith("another distill_teacher")
    assert excluded[0]["weights"] == {"teacher": "b" * 64, "distill_teacher": "d" * 64}


def test_a_seed_measured_at_another_inference_precision_is_excluded(tmp_path: Path) -> None:
    """runtime.amp 'auto' is one params value that gives bf16 inference on one host and fp32 on another."""
    root = _seed_root(tmp_path, 0, "a" * 64, inference="fp32")
    _seed_root(root / SEEDS_DIR / "seed-1", 1, "a" * 64, inference="fp32")
    _seed_root(root / SEEDS_DIR / "seed-2", 2, "a" * 64, inference="bf16")
    _seed_root(root / SEEDS_DIR / "seed-3", 3, "a" * 64)  # collected before the precision was recorded
    included, excluded = load_results(root)
    assert [r.seed for r in included] == [0, 1, 3]
    assert [x["seed"] for x in excluded] == [2]
    assert excluded[0]["reason"].startswith("its inference ran in bf16, the workspace's in fp32")
    assert excluded[0]["inference"] == "bf16"
    # a workspace without the record compares with no seed's precision
    unrecorded = _seed_root(tmp_path / "unrecorded", 0, "a" * 64)
    _seed_root(unrecorded / SEEDS_DIR / "seed-2", 2, "a" * 64, inference="bf16")
    assert [r.seed for r in load_results(unrecorded)[0]] == [0, 2]
