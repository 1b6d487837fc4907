"""EViT over the token-aware ViT: equal to timm at keep 1, token counts, attentive tokens kept and fused."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from maskprune.models.evit import evit_kept, evit_prune, make_evit
from tests.models.tiny import TINY, tiny


def test_evit_at_keep_one_equals_timm_forward() -> None:
    model = tiny()
    reference = VisionTransformer(**TINY).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(3, 1, 28, 28)
    evit = make_evit(model, (1, 3, 4), keep_rate=1.0)
    torch.testing.assert_close(evit(x), reference(x))


@pytest.mark.parametrize("fuse", [True, False])
def test_evit_token_counts_after_each_pruning_block(fuse: bool) -> None:
    evit = make_evit(tiny(), (1, 3, 4), keep_rate=0.5, fuse_token=fuse)
    out = evit.forward_tokens(torch.randn(2, 1, 28, 28), collect_block_tokens=True)
    # 49 patches -> ceil(.5 * 49) = 25 (+1 fused) -> ceil(.5 * 26) = 13 (+1) -> ceil(.5 * 14) = 7 (+1)
    # without fusing: 49 -> 25 -> 13 -> 7; [CLS] is always there
    expected = [50, 27, 27, 15, 9, 9] if fuse else [50, 26, 26, 14, 8, 8]
    assert [t.shape[1] for t in out.block_tokens] == expected
    assert [v.shape[1] for v in out.kept_patches.values()] == [n - 1 for n in expected[1:5:2] + expected[4:5]]
    kept = out.kept_patches[4]
    # the new fused token comes last, labelled -1; an older one may survive as a kept token
    assert (kept[:, -1] == -1).all() if fuse else (kept >= 0).all()
    assert evit_kept(49, 0.7) == 35 and evit_kept(40, 0.7) == 28  # no float error: 0.7 * 40 = 28.000000000000004


def test_evit_keeps_the_most_attended_tokens_and_fuses_the_rest_by_attention() -> None:
    tokens = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, 0.0]]])  # [CLS] + 4 patches
    attn = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    patch_idx = torch.tensor([[10, 11, 12, 13]])
    out, idx = evit_prune(tokens, attn, patch_idx, keep_rate=0.5, num_prefix_tokens=1, fuse_token=True)
    # keep ceil(.5 * 4) = 2 most attended: patch 1 (0.4), patch 3 (0.3);
    # fuse the rest: 0.1 * p0 + 0.2 * p2 = 0.1 * (1, 0) + 0.2 * (2, 2) = (0.5, 0.4)
    torch.testing.assert_close(out[0], torch.tensor([[9.0, 9.0], [0.0, 1.0], [4.0, 0.0], [0.5, 0.4]]))
    assert idx.tolist() == [[11, 13, -1]]
