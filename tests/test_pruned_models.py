"""EViT, DynamicViT and ToMe over the token-aware ViT: equivalences, token counts, hand checks."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from maskprune.checkpoint import load_model, save_model
from maskprune.errors import MaskpruneError
from maskprune.measure import gmacs
from maskprune.models.dynamicvit import DynamicViT, make_dynamicvit, policy_softmax
from maskprune.models.evit import evit_kept, evit_prune, make_evit
from maskprune.models.pruned import PruningSpec, make_pruned, pruning_blocks
from maskprune.models.tome import apply_tome, bipartite_soft_matching, max_tome_r, merge_weighted, remove_tome
from maskprune.models.vit import TokenViT

TINY = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=6, num_heads=4)


def tiny() -> TokenViT:
    torch.manual_seed(0)
    return TokenViT(**TINY).eval()


def test_pruning_blocks_are_quarters_of_the_depth_and_checked() -> None:
    assert pruning_blocks(12) == (3, 6, 9)  # both papers' locations
    assert pruning_blocks(6) == (1, 3, 4)
    assert pruning_blocks(6, [0, 5]) == (0, 5)
    with pytest.raises(MaskpruneError, match=r"block\(s\) \[6\] lie beyond the model's 6 blocks"):
        pruning_blocks(6, [3, 6])
    with pytest.raises(MaskpruneError, match="keep rate 1.5 must lie in"):
        PruningSpec("evit", 1.5, (1,))
    with pytest.raises(MaskpruneError, match="keep rate 0.0 must lie in"):
        PruningSpec("dynamicvit", 0.0, (1,))
    with pytest.raises(MaskpruneError, match="unknown pruning method 'tome'"):
        PruningSpec("tome", 0.5, (1,))  # type: ignore[arg-type]


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


def test_dynamicvit_with_all_ones_decisions_equals_the_unpruned_model() -> None:
    model = tiny()
    x = torch.randn(3, 1, 28, 28)
    expected = model(x)
    dyn = make_dynamicvit(copy.deepcopy(model), (1, 3, 4), keep_rate=0.7).train()
    dyn.draw_decisions = lambda log_probs: torch.ones_like(log_probs[..., :1])
    logits, tokens, policy, decisions = dyn(x, return_policy=True)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)  # eps of the policy softmax only
    assert policy.shape == (3, 49, 1) and [d.shape for d in decisions] == [torch.Size([3, 49])] * 3


def test_dynamicvit_masked_training_path_equals_physical_inference_path() -> None:
    dyn = make_dynamicvit(tiny(), (1, 3, 4), keep_rate=0.7)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        physical = dyn.eval()(x)
        counts = iter([34, 24, 16])  # floor(49 * .7), floor(49 * .49), floor(49 * .343)

        def same_as_inference(log_probs: torch.Tensor) -> torch.Tensor:
            # keep the top-k scores among the tokens still alive, as inference does
            alive = dyn_policy[0] if dyn_policy else torch.ones_like(log_probs[..., :1])
            score = log_probs[..., 0].masked_fill(alive[..., 0] == 0, -torch.inf)
            top = score.topk(next(counts), dim=1).indices
            decision = torch.zeros_like(log_probs[..., :1]).scatter(1, top.unsqueeze(-1), 1.0)
            dyn_policy[:] = [decision]
            return decision

        dyn_policy: list[torch.Tensor] = []
        dyn.train().draw_decisions = same_as_inference
        masked, _, policy, _ = dyn(x, return_policy=True)
    assert policy.sum(dim=1).flatten().tolist() == [16.0] * 4
    torch.testing.assert_close(masked, physical, atol=1e-4, rtol=1e-4)


def test_dynamicvit_inference_keeps_r_powers_of_the_patches() -> None:
    dyn = make_dynamicvit(tiny(), (1, 3, 4), keep_rate=0.7).eval()
    out = dyn.forward_tokens(torch.randn(2, 1, 28, 28), collect_block_tokens=True)
    assert [t.shape[1] for t in out.block_tokens] == [50, 35, 35, 25, 17, 17]
    assert sorted(out.kept_patches) == [1, 3, 4]
    first, last = out.kept_patches[1][0].tolist(), out.kept_patches[4][0].tolist()
    assert set(last) <= set(first) and len(set(first)) == 34  # later stages choose among survivors


def test_policy_softmax_ignores_dropped_keys_but_keeps_the_diagonal() -> None:
    logits = torch.zeros(1, 1, 3, 3)
    policy = torch.tensor([[[1.0], [0.0], [1.0]]])
    weights = policy_softmax(logits, policy)[0, 0]
    eps = 1e-6
    # row 0 sees keys 0 and 2: (1 + eps/3) / (2 + eps); row 1 also sees itself
    assert weights[0].tolist() == pytest.approx(
        [(1 + eps / 3) / (2 + eps), eps / 3 / (2 + eps), (1 + eps / 3) / (2 + eps)]
    )
    assert weights[1].tolist() == pytest.approx([1 / 3] * 3, abs=1e-6)


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


def test_gmacs_at_keep_half_are_about_half() -> None:
    x = torch.randn(1, 1, 28, 28)
    full = gmacs(tiny(), x)
    for spec in (PruningSpec("evit", 0.5, (1, 3, 4)), PruningSpec("dynamicvit", 0.5, (1, 3, 4))):
        ratio = gmacs(make_pruned(tiny(), spec), x) / full
        assert 0.35 < ratio < 0.6, (spec.method, ratio)


def test_pruned_checkpoint_round_trip(tmp_path: Path) -> None:
    spec = PruningSpec("dynamicvit", 0.7, (1, 3, 4))
    model = make_pruned(tiny(), spec)
    from maskprune.config import ModelSpec

    meta = {
        "model": ModelSpec(name="vit_student").model_dump(),
        "num_classes": 10,
        "in_chans": 1,
        "pruning": spec.to_meta(),
    }
    big = TokenViT(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=128, depth=6, num_heads=4)
    model = make_pruned(big, spec).eval()
    save_model(tmp_path / "m", model, meta)
    loaded, _ = load_model(tmp_path / "m")
    assert isinstance(loaded, DynamicViT) and loaded.prune_blocks == (1, 3, 4)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), model(x))
    assert math.isclose(loaded.keep_rate, 0.7)
