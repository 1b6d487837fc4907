"""Token-pruning training: objectives, schedules, backbone learning rates, the prune stage's checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from maskprune.checkpoint import save_model
from maskprune.config import ModelSpec, Params
from maskprune.errors import MaskpruneError
from maskprune.models.vit import build_model
from maskprune.prune import PruneVariant, load_init
from maskprune.pruning import keep_rate_warmup, kept_ratio_loss, kept_token_mse
from maskprune.train import BackboneLR, group_schedules, param_groups


def test_keep_rate_warms_from_one_to_target_on_a_cosine() -> None:
    assert keep_rate_warmup(0.5, 0.0, 2.0) == 1.0
    assert keep_rate_warmup(0.5, 1.0, 2.0) == pytest.approx(0.75)  # halfway: (cos(pi/2) + 1) / 2 = 0.5
    assert keep_rate_warmup(0.5, 2.0, 2.0) == 0.5
    assert keep_rate_warmup(0.5, 0.0, 0.0) == 0.5  # no warm-up: the target from the first step


def test_kept_ratio_loss_by_hand() -> None:
    # stage 1 keeps 3 of 4 (target .5), stage 2 keeps 1 of 4 (target .25): ((.25^2) + 0) / 2
    decisions = [torch.tensor([[1.0, 1.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]])]
    assert kept_ratio_loss(decisions, 0.5).item() == pytest.approx(0.25**2 / 2)


def test_kept_token_mse_only_counts_kept_tokens() -> None:
    tokens = torch.tensor([[[1.0, 1.0], [5.0, 5.0]]])
    target = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    assert kept_token_mse(tokens, target, torch.tensor([[[1.0], [0.0]]])).item() == pytest.approx(0.5)
    assert kept_token_mse(tokens, target, torch.zeros(1, 2, 1)).item() == 0.0


def test_backbone_learns_slower_and_waits_for_the_freeze() -> None:
    model = build_model(Params().models.student, 10, 1)
    model.score_predictor = torch.nn.Linear(4, 2)
    backbone = BackboneLR(("score_predictor.",), scale=0.01, freeze_epochs=1.0)
    groups = param_groups(model, 0.05, backbone)
    new = [g for g in groups if not g["backbone"]]
    assert sum(len(g["params"]) for g in new) == 2  # the new module's weight and bias
    assert {g["weight_decay"] for g in new} == {0.05, 0.0}
    schedules = group_schedules(groups, lambda step: 1.0, steps_per_epoch=10, backbone=backbone)
    for group, schedule in zip(groups, schedules, strict=True):
        expected = (0.0, 0.01) if group["backbone"] else (1.0, 1.0)
        assert (schedule(9), schedule(10)) == expected


def test_prune_variant_names_parse_and_bad_ones_are_refused() -> None:
    assert PruneVariant.parse("evit-masked_kd-0.5") == PruneVariant("evit", "masked_kd", 0.5)
    assert PruneVariant("dynamicvit", "full", 0.7).name == "dynamicvit-full-0.7"
    for bad in ("tome-full-0.5", "evit-half-0.5", "evit-full-1.5", "evit-full-x"):
        with pytest.raises(MaskpruneError, match="is not <method>-<init>-<keep>"):
            PruneVariant.parse(bad)


def test_init_of_another_architecture_is_refused(tmp_path: Path) -> None:
    spec = ModelSpec(name="vit_teacher")
    save_model(
        tmp_path / "models" / "finetune" / "full",
        build_model(spec, 10, 1),
        {"model": spec.model_dump(), "num_classes": 10, "in_chans": 1},
    )
    with pytest.raises(MaskpruneError, match=r"holds a vit_teacher .* not an unpruned models.student"):
        load_init(Params(), "full", tmp_path, torch.device("cpu"))


def test_keep_rates_and_locations_are_validated_in_params() -> None:
    with pytest.raises(ValueError, match="keep ratio must lie in"):
        Params.model_validate({"prune": {"keep_rates": [0.5, 1.2]}})
    with pytest.raises(ValueError, match="strictly increasing"):
        Params.model_validate({"prune": {"locations": [3, 1]}})
    with pytest.raises(ValueError, match="inits"):
        Params.model_validate({"prune": {"inits": ["half"]}})
    assert math.isclose(Params().prune.keep_rates[-1], 0.5)
