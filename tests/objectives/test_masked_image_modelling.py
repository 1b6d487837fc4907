"""The MIM objective adds MTO's terms only when asked and summarises every term."""

from __future__ import annotations

import pytest
import torch

from maskprune.config import MTOSection
from maskprune.models.mim_heads import (
    MAE,
)
from maskprune.models.vit import TokenViT
from maskprune.objectives.masked_image_modelling import TERMS, MIMObjective
from maskprune.runtime import Runtime

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, compile=False, progress=False)


def encoder(depth: int = 2) -> TokenViT:
    torch.manual_seed(0)
    return TokenViT(img_size=16, patch_size=4, in_chans=1, num_classes=0, embed_dim=32, depth=depth, num_heads=2)


@pytest.mark.parametrize("train_mto", [False, True])
def test_objective_adds_mto_only_when_asked_and_summarises_every_term(train_mto: bool) -> None:
    mto = MTOSection(spa_weight=0.01, e_weight=0.1, r_weight=0.1, rank_direction="falling")
    model = MAE(encoder(), decoder_dim=16, decoder_depth=2, decoder_heads=2, in_chans=1)
    objective = MIMObjective("mae", 0.75, 16, 4, True, mto, train_mto, CPU)
    loss = objective(model, torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))
    loss.backward()
    summary = objective.epoch_summary()
    assert set(summary) == {*TERMS, "h_0", "h_1", "h_2"}
    added = mto.spa_weight * summary["mto_spa"] + mto.e_weight * summary["mto_e"] + mto.r_weight * summary["mto_r"]
    assert loss.item() == pytest.approx(summary["rec_loss"] + (added if train_mto else 0.0), rel=1e-5)
    assert model.mask_token.grad is not None and torch.isfinite(model.mask_token.grad).all()
    assert objective.epoch_summary() == {}  # counters restart after each summary
