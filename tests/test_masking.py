"""Token selection: exact keep counts, random and score-based indices, the hybrid ratio sampler."""

from __future__ import annotations

import pytest
import torch

from maskprune.masking import HybridRatios, num_kept, random_keep_idx, score_keep_idx


@pytest.mark.parametrize(
    "n, ratio, kept",
    [
        (49, 1.0, 49),
        (49, 0.75, 36),
        (49, 0.5, 24),
        (49, 0.25, 12),
        (49, 0.01, 1),
        (196, 0.5, 98),
        (196, 0.25, 49),
        (196, 0.7, 137),
        (100, 0.57, 57),
        (10, 0.7, 7),
        (1, 0.25, 1),
    ],
)
def test_num_kept_is_floor_with_at_least_one(n: int, ratio: float, kept: int) -> None:
    assert num_kept(n, ratio) == kept


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.01])
def test_num_kept_refuses_ratios_outside_unit_interval(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"keep ratio must lie in \(0, 1\]"):
        num_kept(49, ratio)


def test_random_keep_idx_is_sorted_unique_and_seeded() -> None:
    a = random_keep_idx(4, 49, 12, torch.Generator().manual_seed(0))
    b = random_keep_idx(4, 49, 12, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (4, 12)
    for row in a:
        assert row.tolist() == sorted(set(row.tolist())) and int(row.min()) >= 0 and int(row.max()) < 49
    assert not torch.equal(a[0], a[1])  # every image gets its own patches


def test_top_k_and_bottom_k_on_a_hand_made_attention_map() -> None:
    scores = torch.tensor([[0.10, 0.50, 0.20, 0.90, 0.00], [0.30, 0.35, 0.80, 0.10, 0.05]])
    assert score_keep_idx(scores, 2).tolist() == [[1, 3], [1, 2]]
    assert score_keep_idx(scores, 3).tolist() == [[1, 2, 3], [0, 1, 2]]
    assert score_keep_idx(scores, 2, largest=False).tolist() == [[0, 4], [3, 4]]
    assert score_keep_idx(scores, 5).tolist() == [[0, 1, 2, 3, 4]] * 2


def test_hybrid_sampler_frequencies_match_its_probabilities() -> None:
    sampler = HybridRatios([1.0, 0.75, 0.5, 0.25], [0.1, 0.2, 0.3, 0.4])
    gen = torch.Generator().manual_seed(0)
    draws = [sampler.sample(gen) for _ in range(40_000)]
    for ratio, prob in zip(sampler.ratios, [0.1, 0.2, 0.3, 0.4], strict=True):
        assert draws.count(ratio) / len(draws) == pytest.approx(prob, abs=0.01)  # 4 standard errors
    assert sampler.mean == pytest.approx(0.1 + 0.15 + 0.15 + 0.1)
    again = [sampler.sample(torch.Generator().manual_seed(0)) for _ in range(3)]
    assert len(set(again)) == 1  # seeded: the same generator state gives the same ratio


def test_hybrid_sampler_uses_the_global_seed_by_default() -> None:
    sampler = HybridRatios([1.0, 0.5], [0.5, 0.5])
    torch.manual_seed(3)
    first = [sampler.sample() for _ in range(20)]
    torch.manual_seed(3)
    assert [sampler.sample() for _ in range(20)] == first and len(set(first)) == 2
    assert HybridRatios([0.5], [1.0]).sample() == 0.5


@pytest.mark.parametrize(
    "ratios, probs, message",
    [
        ([], [], "empty"),
        ([1.0, 0.5], [1.0], "2 keep ratios but 1 probabilities"),
        ([1.0, 0.0], [0.5, 0.5], r"keep ratios must lie in \(0, 1\]"),
        ([1.0, 0.5], [0.7, 0.7], "sum to 1"),
        ([1.0, 0.5], [1.5, -0.5], ">= 0"),
    ],
)
def test_hybrid_sampler_refuses_bad_sets(ratios: list[float], probs: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HybridRatios(ratios, probs)
