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


def test_rank_loss_by_hand_in_both_directions() -> None:
    rising = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)]
    falling = rising[::-1]
    small, large = 2 * math.log(1 + math.exp(-1)), 2 * math.log(1 + math.e)
    assert rank_loss(falling).item() == pytest.approx(small)  # the default: H should fall with depth
    assert rank_loss(rising).item() == pytest.approx(large)
    assert rank_loss(rising, "printed").item() == pytest.approx(small)  # Eq. 7 as printed
    assert rank_loss(falling, "printed").item() == pytest.approx(large)
    worse = [torch.tensor(0.0), torch.tensor(1.0), torch.tensor(3.0)]
    assert rank_loss(falling) < rank_loss(rising) < rank_loss(worse)
    with pytest.raises(ValueError, match="at least two layers"):
        rank_loss([torch.tensor(1.0)])


def descend(direction: str, with_embedding_loss: bool, steps: int = 200) -> tuple[list[float], list[float]]:
    """H of three learnable layers before and after Adam on L_r (+ L_e); the start rises with depth."""
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([3.0, 1.5, 0.5]).view(3, 1, 1, 1)  # larger tokens, sharper softmax, lower H
    layers = (torch.randn(3, 1, 8, 16, generator=gen) * scales).requires_grad_(True)
    masked, visible = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[4, 5, 6, 7]])
    optimizer = torch.optim.Adam([layers], lr=0.02)

    def profile() -> list[torch.Tensor]:
        return [heterogeneity(layers[i], masked, visible) for i in range(3)]

    start = [h.item() for h in profile()]
    for _ in range(steps):
        optimizer.zero_grad()
        h = profile()
        loss = rank_loss(h, direction) + (embedding_loss(h[0], 1e-6) if with_embedding_loss else 0.0)
        loss.backward()
        optimizer.step()
    return start, [h.item() for h in profile()]


def test_rank_loss_alone_makes_each_deeper_layer_less_heterogeneous_than_the_one_before() -> None:
    start, end = descend("falling", with_embedding_loss=False)
    assert start[0] < start[1] < start[2]  # the start rises with depth
    assert end[0] > end[1] > end[2]


def test_embedding_and_rank_losses_together_keep_h0_high_only_with_the_falling_sign() -> None:
    start, end = descend("falling", with_embedding_loss=True)
    assert end[0] > start[0] + 0.5 and end[0] == max(end) and end[0] > end[1] > end[2]
    # The printed sign pulls H_0 down on its own: L_r alone drives it to ~0 against L_e's purpose
    _, printed = descend("printed", with_embedding_loss=False)
    assert printed[0] < 0.05 and printed[0] < printed[1] < printed[2]


def test_losses_have_gradients_that_follow_their_purpose() -> None:
    tokens = X.clone().requires_grad_(True)
    h = [
        heterogeneity(tokens, torch.tensor([[2]]), torch.tensor([[0, 1]])),
        heterogeneity(tokens * 2, torch.tensor([[0]]), torch.tensor([[1, 2]])),
    ]
    (rank_loss(h) + embedding_loss(h[0], 1e-6) + spatial_loss(tokens, torch.tensor([[0, 1]]))).backward()
    assert tokens.grad is not None and torch.isfinite(tokens.grad).all() and tokens.grad.abs().sum() > 0
