"""The pretrain stage: bad decoder and pretrain params stop in one line; probe checkpoints round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskprune.checkpoint import load_model, save_model
from maskprune.config import validate_params
from maskprune.errors import MaskpruneError
from maskprune.models.mim_heads import (
    check_decoder,
)
from maskprune.models.vit import build_model
from stages.pretrain import build_mim, pretrain_job
from tests.conftest import checkpoint_meta, cpu_params
from tests.test_trainer import tiny_data


def test_decoder_and_bad_pretrain_params_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="wider than the encoder"):
        check_decoder(encoder_dim=128, decoder_dim=256, decoder_heads=4)
    with pytest.raises(ValueError, match="divisible by decoder_heads"):
        check_decoder(encoder_dim=128, decoder_dim=60, decoder_heads=8)
    base = cpu_params().model_dump()
    cases = [
        (
            "mae",
            "mask_ratio",
            1.0,
            "pretrain.mae.mask_ratio: mask ratio must lie strictly between 0 and 1 (got 1.0)",
        ),
        (
            "simmim",
            "mask_ratio",
            0.0,
            "pretrain.simmim.mask_ratio: mask ratio must lie strictly between 0 and 1",
        ),
        ("mto", "r_weight", -0.1, "pretrain.mto.r_weight: Input should be greater than or equal to 0"),
        ("objectives", None, ["mae", "beit"], "pretrain.objectives.1: Input should be 'mae' or 'simmim'"),
    ]
    for section, key, value, message in cases:
        raw = {**base, "pretrain": {**base["pretrain"]}}
        if key is None:
            raw["pretrain"][section] = value
        else:
            raw["pretrain"][section] = {**base["pretrain"][section], key: value}
        with pytest.raises(MaskpruneError) as info:
            validate_params(raw)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_too_wide_decoder_stops_before_training() -> None:
    base = cpu_params().model_dump()
    base["pretrain"]["mae"]["decoder_dim"] = 256  # vit_student is 128 wide
    with pytest.raises(MaskpruneError, match="decoder_dim 256 is wider than the encoder \\(128\\)"):
        params = validate_params(base)
        build_mim(params, pretrain_job(params, "mae-baseline"), tiny_data())


def test_a_mean_pooled_probe_checkpoint_round_trips(tmp_path: Path) -> None:
    model = build_model(cpu_params().models.student, num_classes=3, in_chans=1)
    model.reset_classifier(3, global_pool="avg")
    save_model(tmp_path, model, checkpoint_meta(cpu_params().models.student, 3, global_pool="avg"))
    loaded, _ = load_model(tmp_path)
    assert loaded.global_pool == "avg"
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
