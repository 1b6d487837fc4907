"""ToMe over the token-aware ViT: r = 0 is the model, r tokens merged per block, matching by hand."""

from __future__ import annotations

import pytest
import torch

from maskprune.errors import MaskpruneError
from maskprune.models.tome import apply_tome, bipartite_soft_matching, max_tome_r, merge_weighted, remove_tome
from maskprune.models.vit import TokenViT
from tests.models.tiny import tiny


def test_tome_r0_equals_the_model_and_removal_restores_it() -> None:
    model = tiny()
    x = torch.randn(2, 1, 28, 28)
    expected = model(x)
    tome = apply_tome(model, 0)
    torch.testing.assert_close(tome(x), expected)
    tome.tome_r = 3
    assert not torch.allclose(tome(x), expected)
    plain = remove_tome(tome)
    assert type(plain) is TokenViT and not hasattr(plain, "tome_r")
    torch.testing.assert_close(plain(x), expected)


def test_tome_removes_exactly_r_tokens_per_block() -> None:
    tome = apply_tome(tiny(), 4)
    out = tome.forward_tokens(torch.randn(2, 1, 28, 28), collect_block_tokens=True)
    assert [t.shape[1] for t in out.block_tokens] == [46, 42, 38, 34, 30, 26]
    assert out.size.sum(dim=1).flatten().tolist() == [50.0, 50.0]  # every input token is accounted for
    assert max_tome_r(49, 6) == 7  # 50 -> 43 -> ... -> 8; r = 8 cannot merge 8 of 10 tokens in block 5
    with pytest.raises(MaskpruneError, match=r"ToMe r=8 must lie in \[0, 7\]"):
        apply_tome(tiny(), 8)


def test_bipartite_matching_merges_the_most_similar_pair_by_size() -> None:
    # tokens: [CLS], a, b, c, d; A = {CLS, b, d}, B = {a, c}; b is nearly parallel to a
    metric = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.0], [-1.0, 0.0]]])
    merge = bipartite_soft_matching(metric, r=1)
    x = torch.tensor([[[0.0], [2.0], [4.0], [6.0], [8.0]]])
    size = torch.tensor([[[1.0], [1.0], [3.0], [1.0], [1.0]]])
    merged, new_size = merge_weighted(merge, x, size)
    # b (size 3) merges into a (size 1): (2 * 1 + 4 * 3) / 4 = 3.5; order: unmerged A, then B
    assert merged.flatten().tolist() == [0.0, 8.0, 3.5, 6.0]
    assert new_size.flatten().tolist() == [1.0, 1.0, 4.0, 1.0]
