"""MTO's heterogeneity and losses on hand-made tokens, against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from maskprune.objectives.mto import embedding_loss, heterogeneity, rank_loss, row_entropy, spatial_loss

# Three patch tokens of width 2: x0 = (1, 0), x1 = (0, 1), x2 = (1, 1); affinities are x.y / sqrt(2).
X = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])


def entropy_of(*logits: float) -> float:
    """Entropy (nats) of softmax(logits), written out with math."""
    z = sum(math.exp(v) for v in logits)
    return -sum(math.exp(v) / z * math.log(math.exp(v) / z) for v in logits)


def test_row_entropy_of_uniform_and_one_hot_rows() -> None:
    rows = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -torch.inf, -torch.inf, -torch.inf]])
    assert row_entropy(rows).tolist() == pytest.approx([math.log(4), 0.0])


def test_heterogeneity_by_hand() -> None:
    # masked x2 against visible x0, x1: equal affinities 1/sqrt(2) -> uniform -> ln 2
    h = heterogeneity(X, masked_idx=torch.tensor([[2]]), visible_idx=torch.tensor([[0, 1]]))
    assert h.item() == pytest.approx(math.log(2))
    # masked x0 against visible x1, x2: affinities 0 and 1/sqrt(2)
    h = heterogeneity(X, masked_idx=torch.tensor([[0]]), visible_idx=torch.tensor([[1, 2]]))
    assert h.item() == pytest.approx(entropy_of(0.0, 1 / math.sqrt(2)))
    # two masked rows average: x0 -> {x1, x2} and x1 -> {x0, x2} have the same entropy as above
    both = heterogeneity(torch.cat([X, X]), torch.tensor([[0], [1]]), torch.tensor([[1, 2], [0, 2]]))
    assert both.item() == pytest.approx(entropy_of(0.0, 1 / math.sqrt(2)))


def test_spatial_loss_sums_visible_rows_and_skips_the_token_itself() -> None:
    # visible x0 -> {x1, x2}: logits (0, 1/sqrt(2)); visible x1 -> {x0, x2}: the same
    expected = 2 * entropy_of(0.0, 1 / math.sqrt(2))
    assert spatial_loss(X, torch.tensor([[0, 1]])).item() == pytest.approx(expected)
    # one visible row x2 -> {x0, x1}: logits (1/sqrt(2), 1/sqrt(2)) -> ln 2
    assert spatial_loss(X, torch.tensor([[2]])).item() == pytest.approx(math.log(2))


def test_embedding_loss_is_the_inverse_of_h0() -> None:
    assert embedding_loss(torch.tensor(0.5), eps=1e-6).item() == pytest.approx(1 / (0.5 + 1e-6))


def test_rank_loss_is_small_for_rising_h_and_grows_when_the_order_is_violated() -> None:
    rising = rank_loss([torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)])
    falling = rank_loss([torch.tensor(3.0), torch.tensor(2.0), torch.tensor(1.0)])
    assert rising.item() == pytest.approx(2 * math.log(1 + math.exp(-1)))
    assert falling.item() == pytest.approx(2 * math.log(1 + math.e))
    worse = rank_loss([torch.tensor(3.0), torch.tensor(1.0), torch.tensor(0.0)])
    assert rising < falling < worse
    with pytest.raises(ValueError, match="at least two layers"):
        rank_loss([torch.tensor(1.0)])


def test_losses_have_gradients_that_follow_their_purpose() -> None:
    tokens = X.clone().requires_grad_(True)
    h = [
        heterogeneity(tokens, torch.tensor([[2]]), torch.tensor([[0, 1]])),
        heterogeneity(tokens * 2, torch.tensor([[0]]), torch.tensor([[1, 2]])),
    ]
    (rank_loss(h) + embedding_loss(h[0], 1e-6) + spatial_loss(tokens, torch.tensor([[0, 1]]))).backward()
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all() and tokens.grad.abs().sum() > 0
