"""Which seeds the report may aggregate: their params may differ only where no result can change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from maskprune.errors import MaskpruneError
from maskprune.layout import SEEDS_DIR
from maskprune.report.results import differing_keys, load_results, precision_summary, recorded_precisions


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
    assert excluded[0]["reason"].startswith("it ran in bf16, the workspace in fp32")
    assert excluded[0]["precision"] == "bf16"
    # a workspace without the record compares with no seed's precision
    unrecorded = _seed_root(tmp_path / "unrecorded", 0, "a" * 64)
    _seed_root(unrecorded / SEEDS_DIR / "seed-2", 2, "a" * 64, inference="bf16")
    assert [r.seed for r in load_results(unrecorded)[0]] == [0, 2]


def _history(root: Path, stage: str, training: list[int], inference: list[int], evaluated: bool = True) -> None:
    """models/<stage>/history.csv with the given per-epoch record; `evaluated`: evaluate.json lists the stage."""
    folder = root / "models" / stage
    folder.mkdir(parents=True)
    rows = ["epoch,val_top1,training_bf16,inference_bf16"]
    rows += [f"{i + 1},0.5,{t},{n}" for i, (t, n) in enumerate(zip(training, inference, strict=True))]
    (folder / "history.csv").write_text("\n".join(rows) + "\n")
    evaluate_file = root / "metrics" / "evaluate.json"
    if evaluated and evaluate_file.is_file():
        evaluate = json.loads(evaluate_file.read_text())
        evaluate["models"].setdefault(stage, {"top1": 0.5})
        evaluate_file.write_text(json.dumps(evaluate))


def test_a_seed_whose_stage_resumed_at_another_precision_is_excluded_naming_the_stage(tmp_path: Path) -> None:
    """A seed cut off on one host and resumed on another with bf16 inference validates (and, for
    pretrain, probes) its last epochs in bf16, while evaluate may run in fp32 on a third host."""
    root = _seed_root(tmp_path, 0, "a" * 64, inference="fp32")
    _history(root, "pretrain/mae-mto", [0, 0], [0, 0])
    same = _seed_root(root / SEEDS_DIR / "seed-1", 1, "a" * 64, inference="fp32")
    _history(same, "pretrain/mae-mto", [0, 0], [0, 0])
    resumed = _seed_root(root / SEEDS_DIR / "seed-2", 2, "a" * 64, inference="fp32")
    _history(resumed, "pretrain/mae-mto", [0, 0], [0, 1])
    _history(resumed, "finetune/full", [0, 0], [0, 0])
    included, excluded = load_results(root)
    assert [(r.seed, r.precision) for r in included] == [(0, "fp32"), (1, "fp32")]
    assert [x["seed"] for x in excluded] == [2]
    assert excluded[0]["precision"] == (
        "mixed: inference bf16 in pretrain/mae-mto; inference fp32 in evaluate, finetune/full, pretrain/mae-mto"
    )
    assert excluded[0]["reason"].startswith("it ran in mixed: inference bf16 in pretrain/mae-mto;")


def test_precisions_compare_kind_by_kind_where_both_seeds_recorded_them(tmp_path: Path) -> None:
    """A workspace trained on a host with native bf16 (fp32 training, bf16 inference, both recorded per
    epoch) and a seed collected there before the epochs recorded theirs (evaluate's bf16 alone)."""
    root = _seed_root(tmp_path, 0, "a" * 64, inference="bf16")
    _history(root, "teacher", [0], [1])
    _seed_root(root / SEEDS_DIR / "seed-1", 1, "a" * 64, inference="bf16")
    _seed_root(root / SEEDS_DIR / "seed-2", 2, "a" * 64, inference="fp32")
    mixed = _seed_root(root / SEEDS_DIR / "seed-3", 3, "a" * 64)  # mixed in itself: excluded against any workspace
    _history(mixed, "teacher", [0, 1], [1, 1])
    included, excluded = load_results(root)
    assert [(r.seed, r.precision) for r in included] == [(0, "training fp32, inference bf16"), (1, "bf16")]
    reasons = {x["seed"]: x["reason"] for x in excluded}
    assert reasons[2].startswith("it ran in fp32, the workspace in training fp32, inference bf16")
    assert reasons[3].startswith("it ran in mixed: training bf16 in teacher; training fp32 in teacher")


def test_precision_summaries_by_hand(tmp_path: Path) -> None:
    evaluate = {"models": {"teacher": {}}, "setup": {"precision": {"training": "bf16", "inference": "bf16"}}}
    _history(tmp_path, "teacher", [0], [1])
    found = recorded_precisions(tmp_path, evaluate)
    # evaluate trains nothing: only its inference counts
    assert found == {"training": {"fp32": {"teacher"}}, "inference": {"bf16": {"evaluate", "teacher"}}}
    # a distilled student's stage folder holds the models evaluate reads as <folder>/finetune and /probe
    _history(tmp_path, "distill/vit-cls", [1], [1])
    evaluate["models"].update({"distill/vit-cls/finetune": {}, "distill/vit-cls/probe": {}})
    assert recorded_precisions(tmp_path, evaluate)["training"] == {"fp32": {"teacher"}, "bf16": {"distill/vit-cls"}}
    assert precision_summary(found) == "training fp32, inference bf16"
    assert precision_summary({"training": {"bf16": {"teacher"}}, "inference": {"bf16": {"teacher"}}}) == "bf16"
    assert precision_summary({}) is None
    many = {"inference": {"fp32": {f"prune/{i}" for i in range(5)}, "bf16": {"teacher"}}}
    assert (
        precision_summary(many) == "mixed: inference bf16 in teacher; inference fp32 in prune/0, prune/1, prune/2 ..."
    )


def test_a_stage_folder_evaluate_did_not_read_leaves_the_precision_alone(tmp_path: Path) -> None:
    """`dvc repro` leaves a removed matrix item's folder in models/: its epochs are not part of the seed."""
    root = _seed_root(tmp_path, 0, "a" * 64, inference="fp32")
    _history(root, "finetune/full", [0], [0])
    seed = _seed_root(root / SEEDS_DIR / "seed-1", 1, "a" * 64, inference="fp32")
    _history(seed, "finetune/full", [0], [0])
    _history(seed, "distill/vit-cls", [1], [1], evaluated=False)  # stale, from an older matrix
    _history(seed, "distill/vit-cls_tokens", [0], [0])
    assert [(r.seed, r.precision) for r in load_results(root)[0]] == [(0, "fp32"), (1, "fp32")]
    # the same folder, once evaluate reads its model, mixes the seed's precisions
    evaluate_file = seed / "metrics" / "evaluate.json"
    evaluate = json.loads(evaluate_file.read_text())
    evaluate["models"]["distill/vit-cls/finetune"] = {"top1": 0.5}
    evaluate_file.write_text(json.dumps(evaluate))
    assert [x["seed"] for x in load_results(root)[1]] == [1]


def test_a_workspace_whose_params_changed_since_its_results_were_made_is_refused(tmp_path: Path) -> None:
    root = _seed_root(tmp_path, 0, "a" * 64)
    (root / "params.yaml").write_text(
        yaml.safe_dump(
            {"seed": 0, "distill": {"finetune": {"train_limit": 5000, "min_lr": 1.0e-05}}, "report": {"x": 2}}
        )
    )
    (root / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "distill": {"cmd": "train", "params": ["seed", "distill.finetune"]},
                    "report": {"cmd": "report", "params": ["report"]},
                }
            }
        )
    )

    def lock(train_limit: int) -> str:
        # as DVC writes it: 1e-05 (a string to PyYAML); a stage dvc.yaml no longer has; the report's own params
        return (
            "schema: '2.0'\nstages:\n"
            f"  distill:\n    params:\n      params.yaml:\n        seed: 0\n        distill.finetune:\n"
            f"          train_limit: {train_limit}\n          min_lr: 1e-05\n"
            "  prune@old:\n    params:\n      params.yaml:\n        seed: 3\n"
            "  report:\n    params:\n      params.yaml:\n        report:\n          x: 1\n"
        )

    (root / "dvc.lock").write_text(lock(5000))
    assert [r.seed for r in load_results(root)[0]] == [0]
    (root / "dvc.lock").write_text(lock(10000))
    with pytest.raises(MaskpruneError, match=r"\(distill.finetune.train_limit: 10000 -> 5000\): run `dvc repro`"):
        load_results(root)
