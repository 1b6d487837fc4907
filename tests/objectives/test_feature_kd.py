"""Task-agnostic feature KD by hand: the [CLS] target and the per-patch token target."""

from __future__ import annotations

import pytest
import torch

from maskprune.objectives.feature_kd import feature_distillation_loss


def test_cls_target_compares_only_the_cls_token() -> None:
    student = torch.tensor([[[1.0, 2.0], [9.0, 9.0]]])  # [CLS], one patch
    teacher = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]]])  # [CLS], two patches
    loss = feature_distillation_loss(student, torch.tensor([[1]]), teacher, "cls", "mse")
    assert loss.item() == pytest.approx((1 + 4) / 2)


def test_cls_tokens_target_matches_each_kept_patch_to_the_same_teacher_patch_and_skips_fused() -> None:
    student = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [7.0, 7.0]]])  # [CLS], patch 1, a fused token
    teacher = torch.tensor([[[0.0, 0.0], [4.0, 4.0], [3.0, 1.0]]])  # [CLS], patch 0, patch 1
    loss = feature_distillation_loss(student, torch.tensor([[1, -1]]), teacher, "cls_tokens", "mse")
    assert loss.item() == pytest.approx(0.0 + ((1 - 3) ** 2 + (1 - 1) ** 2) / 2)  # only patch 1 counts
    cosine = feature_distillation_loss(student, torch.tensor([[1, -1]]), teacher + 1, "cls_tokens", "cosine")
    # [CLS]: zero student vector -> cosine 0 -> loss 1; patch 1: (1, 1) vs (4, 2)
    expected = 1.0 + 1.0 - (4 + 2) / (2**0.5 * 20**0.5)
    assert cosine.item() == pytest.approx(expected, rel=1e-5)
