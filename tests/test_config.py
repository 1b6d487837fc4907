"""params.yaml validation: profiles, completeness, and one-line errors for bad input."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maskprune.config import GENERATED, load_params, read_yaml, validate_params
from maskprune.errors import MaskpruneError
from maskprune.profile import deep_merge, profile_params, render
from tests.conftest import REPO, cpu_params, updated

CPU = profile_params("cpu", REPO).model_dump()


def full(**overlay: object) -> dict:
    return deep_merge(copy.deepcopy(CPU), overlay)


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu", "gpu-check"])
def test_every_profile_validates_and_round_trips(name: str, tmp_path: Path) -> None:
    params = profile_params(name, REPO)
    assert params.profile == name
    path = tmp_path / "params.yaml"
    path.write_text(render(params))
    assert load_params(path) == params


def test_committed_params_yaml_is_the_cpu_profile() -> None:
    assert load_params(REPO / "params.yaml") == profile_params("cpu", REPO)


def test_profiles_differ_where_they_should() -> None:
    smoke, gpu = profile_params("smoke", REPO), profile_params("gpu", REPO)
    assert smoke.data.train_limit > 0 and profile_params("cpu", REPO).data.train_limit == 0
    assert gpu.evaluate.throughput_batch == 256
    assert gpu.models.teacher.name == "deit_small_patch16_224"


def test_deep_merge_keeps_siblings() -> None:
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2}, "d": 3}


BAD = [
    (full(teacher={"lr_rate": 0.1}), "teacher.lr_rate: unknown key; allowed keys here: epochs, batch_size"),
    (full(bogus=1), "bogus: unknown key; allowed keys here: profile, seed, data"),
    (full(teacher={"epochs": "many"}), "teacher.epochs: Input should be a valid integer"),
    (full(teacher={"epochs": -1}), "teacher.epochs: Input should be greater than or equal to 0 (got -1)"),
    (full(finetune={"train": {"epochs": 0}}), "finetune.train.epochs: Input should be greater than or equal to 1"),
    (
        full(teacher={"epochs": 0, "init": "scratch"}),
        "teacher.epochs is 0 but teacher.init is 'scratch': an untrained teacher teaches noise",
    ),
    (full(teacher={"lr": -1.0}), "teacher.lr: Input should be greater than 0"),
    (full(data={"format": "parquet"}), "data.format: Input should be 'idx', 'cifar10', 'imagefolder' or 'webdataset'"),
    (full(data={"val_fraction": 1.5}), "data.val_fraction: Input should be less than 1"),
    (full(profile="laptop"), "profile: Input should be 'smoke', 'cpu', 'gpu', 'gpu-check' or 'paper'"),
    (full(models={"teacher": {"name": "vit_tiny_patch16_24"}}), "did you mean vit_tiny_patch16_224"),
    (full(models={"student": {"patch_size": 5}}), "img_size 28 is not a multiple of patch_size 5"),
    (full(models={"teacher": {"img_size": 56}}), "student and teacher patch grids differ"),
    (full(teacher={"min_lr": 1.0}), "min_lr 1.0 is larger than lr 0.001"),
    (
        full(prune={"evit": {"train": {"epochs": 3.0}}}),
        "evit.train sets epochs; a method may set only lr, min_lr, weight_decay, warmup_epochs",
    ),
    (full(prune={"dynamicvit": {"train": {"min_lr": 1.0}}}), "min_lr 1.0 is larger than lr 0.001"),
    (full(evaluate={"occlusion_drop": [0.5, 0.1]}), "fractions must be strictly increasing"),
    (full(evaluate={"occlusion_drop": [0.0, 1.0]}), "fractions must lie in [0, 1)"),
    (full(runtime={"device": "tpu"}), "runtime.device: Input should be 'auto', 'cpu' or 'cuda'"),
    (
        full(runtime={"progress": False}),
        "runtime.progress: Input should be 'auto', 'always' or 'never' (got False)",
    ),
    ([1, 2], "expected a mapping of sections"),
    (
        full(finetune={"masked": {"keep_ratios": [1.0, 1.5], "probs": [0.5, 0.5]}}),
        "finetune.masked: keep ratios must lie in (0, 1], got [1.0, 1.5]",
    ),
    (full(finetune={"masked": {"keep_ratios": [0.0], "probs": [1.0]}}), "keep ratios must lie in (0, 1]"),
    (
        full(finetune={"masked": {"keep_ratios": [], "probs": []}}),
        "finetune.masked: the hybrid set of keep ratios is empty",
    ),
    (
        full(finetune={"masked": {"keep_ratios": [1.0, 0.5], "probs": [0.5, 0.6]}}),
        "finetune.masked: probabilities must be >= 0 and sum to 1, got [0.5, 0.6]",
    ),
    (
        full(finetune={"masked": {"keep_ratios": [1.0, 0.5], "probs": [1.0]}}),
        "2 keep ratios but 1 probabilities",
    ),
    (
        full(finetune={"masked_kd": {"teacher_keep": 1.2}}),
        "finetune.masked_kd.teacher_keep: keep ratio must lie in (0, 1], got 1.2",
    ),
    (
        full(finetune={"masked_kd": {"criterion": "cls_norm"}}),
        "finetune.masked_kd.criterion: Input should be 'student_attn', 'random', 'teacher_attn' or 'bottom_k'",
    ),
    (full(finetune={"kd": {"alpha": 1.5}}), "finetune.kd.alpha: Input should be less than or equal to 1"),
    (
        full(finetune={"init": "pretrained_file"}),
        "finetune.init is 'pretrained_file' but models.student.pretrained_file is empty",
    ),
    (
        full(models={"student": {"name": "vit_tiny_patch16_224", "pretrained_file": "pretrained/w.safetensors"}}),
        "models.student.pretrained_file is set but finetune.init is 'models/pretrain/mae-baseline'",
    ),
    (
        full(teacher={"init": "pretrained_file"}),
        "teacher.init is 'pretrained_file' but models.teacher.pretrained_file is empty",
    ),
    (
        full(
            models={"teacher": {"name": "vit_tiny_patch16_224", "pretrained_file": "pretrained/w.safetensors"}},
            teacher={"init": "scratch"},
        ),
        "models.teacher.pretrained_file is set but teacher.init is 'scratch'",
    ),
    *(
        (
            full(models={"teacher": {"name": "vit_tiny_patch16_224", "pretrained_file": path}}),
            "models.teacher.pretrained_file: give a file under pretrained/",
        )
        for path in ("/weights/w.safetensors", "w.safetensors", "pretrained/../w.safetensors", "pretrained")
    ),
    (full(models={"student": {"normalize": "imagenet"}}), "models.student.normalize: Input should be 'auto' or 'data'"),
]


@pytest.mark.parametrize("raw, message", BAD)
def test_bad_params_fail_with_one_line_naming_the_key(raw: object, message: str) -> None:
    with pytest.raises(MaskpruneError) as info:
        validate_params(raw)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_teacher_of_no_epochs_needs_no_schedule() -> None:
    """teacher.epochs 0 (a teacher used as it is) keeps the profile's warm-up: it runs no schedule to check."""
    params = validate_params(full(teacher={"epochs": 0, "warmup_epochs": 0.5}))
    assert params.teacher.epochs == 0 and params.teacher.init == "models/distill_teacher"
    with pytest.raises(MaskpruneError, match="warmup_epochs 3.0 exceeds epochs 2"):
        validate_params(full(teacher={"epochs": 2, "warmup_epochs": 3.0}))


@pytest.mark.parametrize("section, key", [("teacher", "grad_clip"), ("data", "val_fraction"), ("runtime", "device")])
def test_missing_key_is_refused_so_dvc_sees_every_value(section: str, key: str) -> None:
    raw = full()
    del raw[section][key]
    with pytest.raises(MaskpruneError) as info:
        validate_params(raw)
    assert str(info.value) == (
        f"params.yaml: {section}.{key} is missing; "
        "run `python -m maskprune.profile cpu` or add it: DVC must see every parameter"
    )


def test_missing_keys_are_named_together_with_the_profile_to_regenerate() -> None:
    raw = full(profile="smoke")
    del raw["prune"]["train"]["epochs"], raw["teacher"]["lr"]
    with pytest.raises(MaskpruneError) as info:
        validate_params(raw)
    assert str(info.value) == (
        "params.yaml: teacher.lr, prune.train.epochs are missing; "
        "run `python -m maskprune.profile smoke` or add them: DVC must see every parameter"
    )


def test_broken_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("teacher: {epochs: [1,\n")
    with pytest.raises(MaskpruneError, match="not valid YAML at line"):
        load_params(path)
    with pytest.raises(MaskpruneError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_profile_cli_writes_complete_params(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "maskprune.profile", "smoke", "--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load(out.read_text())
    assert written["profile"] == "smoke" and written["data"]["train_limit"] == 1200
    assert validate_params(written) == profile_params("smoke", REPO)


def test_stage_cli_reports_bad_params_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full(teacher={"epochs": -3})))
    done = subprocess.run(
        [sys.executable, "-m", "stages.teacher"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{REPO / 'src'}:{REPO}", "PATH": "/usr/bin"},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "maskprune: error: params.yaml: teacher.epochs: Input should be greater than or equal to 0 (got -3); "
        + GENERATED.format(profile="cpu")
    ]


def test_keep_rates_and_locations_are_validated_in_params() -> None:
    with pytest.raises(ValueError, match="keep ratio must lie in"):
        updated(cpu_params().prune, keep_rates=[0.5, 1.2])
    with pytest.raises(ValueError, match="strictly increasing"):
        updated(cpu_params().prune, locations=[3, 1])
    with pytest.raises(ValueError, match="inits"):
        updated(cpu_params().prune, inits=["half"])
    assert math.isclose(cpu_params().prune.keep_rates[-1], 0.5)


def test_a_yaml_syntax_error_keeps_the_parsers_reason(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 0\nteacher:\n\tepochs: 3\n")
    with pytest.raises(MaskpruneError) as err:
        read_yaml(bad)
    assert str(err.value) == (
        f"{bad}: not valid YAML at line 3, column 1 (found character '\\t' that cannot start any token): fix the syntax"
    )


def test_a_range_error_names_its_value_once() -> None:
    params = cpu_params().model_dump()
    params["prune"]["keep_rates"] = [1.5]
    with pytest.raises(MaskpruneError) as err:
        validate_params(params)
    assert str(err.value) == (
        "params.yaml: prune.keep_rates: keep ratio must lie in (0, 1], got 1.5; params.yaml is written by "
        "`python -m maskprune.profile cpu`: set your value in params.local.yaml (or profiles/cpu.yaml) and rerun that"
    )


def test_a_pruning_method_trains_with_its_own_optimiser_values_over_prune_train() -> None:
    cfg = validate_params(full(prune={"evit": {"train": {"lr": 2e-5, "min_lr": 2e-6}}})).prune
    evit, dynamicvit = cfg.train_for("evit"), cfg.train_for("dynamicvit")
    assert (evit.lr, evit.min_lr) == (2e-5, 2e-6) and dynamicvit == cfg.train
    assert evit.model_dump() == {**cfg.train.model_dump(), "lr": 2e-5, "min_lr": 2e-6}


@pytest.mark.parametrize(
    ("prune", "student", "problem"),
    [
        # NOTE: the cpu student: 28 px at patch 4 is 49 patches, 6 blocks prune at 1, 3, 4; 49 * 0.25**3 = 0.766
        (
            {"keep_rates": [1.0, 0.5, 0.25]},
            {},
            "keep rate 0.25 leaves 0.766 of the student's 49 patches after its 3 pruning blocks, where at least "
            "one must remain; use a keep rate of at least 0.274",  # 49 ** (-1 / 3) = 0.2733
        ),
        (
            {"keep_rates": [0.5, 0.001], "locations": [3]},
            {},
            "keep rate 0.001 leaves 0.049 of the student's 49 patches after its 1 pruning blocks, where at least "
            "one must remain; use a keep rate of at least 0.021",
        ),
        (  # DeiT-S at 224 px: 196 patches, 12 blocks prune at 3, 6, 9; 196 * 0.1**3 = 0.196; 196 ** (-1 / 3) = 0.1721
            {"keep_rates": [0.5, 0.1]},
            {"name": "deit_small_patch16_224", "img_size": 224, "patch_size": 16},
            "keep rate 0.1 leaves 0.196 of the student's 196 patches after its 3 pruning blocks, where at least "
            "one must remain; use a keep rate of at least 0.173",
        ),
    ],
)
def test_a_keep_rate_must_leave_a_patch_after_every_pruning_block(prune: dict, student: dict, problem: str) -> None:
    models = {"student": student, "teacher": {**student, "name": "deit_base_patch16_224"}} if student else {}
    with pytest.raises(MaskpruneError) as err:
        validate_params(full(prune=prune, models=models))
    assert str(err.value) == f"params.yaml: prune.keep_rates: {problem}; {GENERATED.format(profile='cpu')}"
    fine = {**prune, "keep_rates": [0.5, 0.3]}  # 49 * 0.3**3 = 1.32 patches
    assert validate_params(full(prune=fine)).prune.keep_rates == [0.5, 0.3]
