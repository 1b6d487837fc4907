"""Profiles: profiles/cpu.yaml holds the whole cpu recipe, the others override it, the schema holds none."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import BaseModel, ValidationError

from maskprune.config import PROFILES, FinetuneTrain, KDSection, ModelSpec, Params, load_params, validate_params
from maskprune.errors import MaskpruneError
from maskprune.measure import gmacs
from maskprune.models.vit import build_model
from maskprune.profile import deep_merge, main, profile_params, read_profile, render
from tests.conftest import REPO, cpu_params

# The keys whose value is a convention, not a recipe choice (see the top of src/maskprune/config.py).
NEUTRAL = {
    "seed",
    "data.seed",
    "teacher.seed",
    *(f"models.{m}.{key}" for m in ("student", "teacher") for key in ("pretrained_file", "normalize")),
    *(
        f"runtime.{key}"
        for key in ("device", "threads", "amp", "compile", "progress", "loader_workers")
        + ("nproc_per_node", "nnodes", "rdzv_endpoint", "max_restarts", "checkpoint_dir")
    ),
    *(f"tracking.{key}" for key in ("enabled", "uri", "experiment", "required", "registered_model", "model_alias")),
    *(f"{section}.kd.{key}" for section in ("finetune", "prune") for key in ("temperature", "kind")),
    "prune.locations",
    "pretrain.mto.eps",
    "report.confidence",
}


def keys_with_defaults(model: type[BaseModel], prefix: str = "") -> set[str]:
    found = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= keys_with_defaults(annotation, f"{prefix}{name}.")
        elif not field.is_required():
            found.add(f"{prefix}{name}")
    return found


def test_cpu_profile_renders_to_the_committed_params_yaml() -> None:
    assert render(profile_params("cpu", REPO)) == (REPO / "params.yaml").read_text(encoding="utf-8")


def test_cpu_yaml_sets_every_key_as_rendered() -> None:
    assert read_profile("cpu", REPO) == profile_params("cpu", REPO).model_dump()


@pytest.mark.parametrize("name", [name for name in PROFILES if name != "cpu"])
def test_other_profiles_are_cpu_with_their_own_keys_over_it(name: str) -> None:
    overlay = read_profile(name, REPO)
    expected = deep_merge(profile_params("cpu", REPO).model_dump(), overlay)
    assert profile_params(name, REPO).model_dump() == expected
    assert validate_params(expected) == profile_params(name, REPO)


def test_the_schema_has_defaults_only_for_conventions() -> None:
    assert keys_with_defaults(Params) == NEUTRAL


def test_params_and_recipe_sections_cannot_be_built_from_defaults() -> None:
    with pytest.raises(ValidationError) as info:
        Params()
    assert {"profile", "data", "models", "teacher", "prune"} <= {e["loc"][0] for e in info.value.errors()}
    for section, recipe_keys in (
        (FinetuneTrain, {"epochs", "lr", "batch_size", "train_limit", "augment"}),
        (KDSection, {"alpha"}),
        (ModelSpec, {"name", "img_size", "patch_size", "drop_path_rate"}),
    ):
        with pytest.raises(ValidationError) as info:
            section()
        assert {e["loc"][0] for e in info.value.errors()} >= recipe_keys
    with pytest.raises(MaskpruneError, match=r"^params.yaml: profile, data, models, teacher, pretrain and 5 more"):
        validate_params({})


@pytest.fixture
def profiles_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    return tmp_path


def edit(root: Path, name: str, change: dict) -> None:
    path = root / "profiles" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(path.read_text()), change)))


@pytest.mark.parametrize("name", PROFILES)
def test_a_key_missing_from_cpu_yaml_is_named_with_the_fix(profiles_copy: Path, name: str) -> None:
    tree = yaml.safe_load((profiles_copy / "profiles" / "cpu.yaml").read_text())
    del tree["distill"]["probe"]["lr"]
    (profiles_copy / "profiles" / "cpu.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(MaskpruneError) as info:
        profile_params(name, profiles_copy)
    assert str(info.value) == (
        "profiles/cpu.yaml: distill.probe.lr is missing; add it to profiles/cpu.yaml, which every profile extends"
    )


def test_a_bad_value_names_the_profile_file_that_sets_it(profiles_copy: Path) -> None:
    edit(profiles_copy, "gpu", {"teacher": {"epochs": -1}})
    with pytest.raises(MaskpruneError, match=r"^profiles/gpu.yaml: teacher.epochs: .* equal to 0 \(got -1\)$"):
        profile_params("gpu", profiles_copy)
    edit(profiles_copy, "cpu", {"prune": {"keep_rates": [0.5, 0.5]}})
    with pytest.raises(MaskpruneError, match=r"^profiles/cpu.yaml: prune.keep_rates: \[0.5, 0.5\] lists a keep rate"):
        profile_params("smoke", profiles_copy)


def test_every_profile_switch_reapplies_your_local_overlay(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    own = {"name": "shoes", "format": "imagefolder", "root": str(tmp_path)}
    (tmp_path / "params.local.yaml").write_text(yaml.safe_dump({"data": own, "teacher": {"epochs": 7}}))
    out = tmp_path / "params.yaml"
    for profile in ("smoke", "cpu"):
        main([profile, "--output", str(out), "--set", "seed=3"])
        kept = load_params(out)
        assert {k: v for k, v in kept.data.model_dump().items() if k in own} == own
        assert kept.data.val_fraction == profile_params(profile, REPO).data.val_fraction  # the rest: the profile's
        assert (kept.teacher.epochs, kept.seed, kept.profile) == (7, 3, profile)
        assert "applied your params.local.yaml (data, teacher)" in capsys.readouterr().out


def test_without_an_overlay_a_switch_says_it_replaces_your_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    own = {**cpu_params().data.model_dump(), "name": "shoes", "format": "imagefolder", "root": str(tmp_path)}
    out = tmp_path / "params.yaml"
    out.write_text(yaml.safe_dump({**cpu_params().model_dump(), "data": own}))
    main(["smoke", "--output", str(out)])
    assert (
        "data section (data.name='shoes') is replaced by the profile's; to keep your own data across profile "
        "switches, put its keys in params.local.yaml" in capsys.readouterr().out
    )
    assert load_params(out).data.name == "fashion_mnist"


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ({"data": {"nmae": "shoes"}}, r"^maskprune: error: params.local.yaml: data.nmae: .*"),
        ({"teacher": {"epochs": -1}}, r"^maskprune: error: params.local.yaml: teacher.epochs: .* \(got -1\)$"),
        (["data"], r"^maskprune: error: params.local.yaml: expected a mapping of sections"),
    ],
)
def test_a_bad_overlay_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture, overlay, message) -> None:
    (tmp_path / "params.local.yaml").write_text(yaml.safe_dump(overlay))
    out = tmp_path / "params.yaml"
    with pytest.raises(SystemExit):
        main(["smoke", "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.match(message, err), err
    assert not out.exists()


@pytest.mark.parametrize(("role", "gmacs_printed"), [("student", 4.6), ("teacher", 17.6)])
def test_the_paper_profile_builds_the_papers_models_at_their_cost(role: str, gmacs_printed: float) -> None:
    """DeiT-S and DeiT-B at 224 px cost what MaskedKD, EViT and DynamicViT print (GMACs, to 0.1)."""
    params = profile_params("paper", REPO)
    spec = getattr(params.models, role)
    model = build_model(spec, num_classes=1000, in_chans=3, weights=False)
    assert round(gmacs(model, torch.zeros(1, 3, spec.img_size, spec.img_size)), 1) == gmacs_printed
    assert params.data.format == "imagefolder" and params.data.image_size == 224 and params.data.storage == "shards"
