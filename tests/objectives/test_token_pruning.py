"""Token-pruning objectives by hand: the keep-rate warm-up, the kept-ratio loss, the kept-token MSE."""

from __future__ import annotations

import pytest
import torch

from maskprune.objectives.token_pruning import keep_rate_warmup, kept_ratio_loss, kept_token_mse


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
