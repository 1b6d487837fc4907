"""The token-aware ViT against timm's own forward and explicit attention."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from maskprune.config import ModelSpec
from maskprune.errors import MaskpruneError
from maskprune.measure import gmacs
from maskprune.models.vit import (
    TokenViT,
    attention_residual,
    build_model,
    cls_attention,
    gather_tokens,
    mlp_residual,
)
from tests.conftest import cpu_params, updated

TINY = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=3, num_heads=4)


def tiny_pair() -> tuple[VisionTransformer, TokenViT]:
    torch.manual_seed(0)
    reference = VisionTransformer(**TINY).eval()
    model = TokenViT(**TINY).eval()
    model.load_state_dict(reference.state_dict())
    return reference, model


def test_all_tokens_kept_equals_timm_forward() -> None:
    reference, model = tiny_pair()
    x = torch.randn(3, 1, 28, 28)
    all_idx = torch.arange(49).expand(3, -1)
    expected = reference(x)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x, keep_idx=all_idx), expected)
    torch.testing.assert_close(model.forward_tokens(x, cls_attn_blocks=[0, 2]).tokens, reference.forward_features(x))


def test_timm_named_model_becomes_token_vit_with_identical_output() -> None:
    spec = ModelSpec(name="vit_tiny_patch16_224", img_size=32, patch_size=8, drop_path_rate=0.0)
    model = build_model(spec, num_classes=10, in_chans=3).eval()
    assert isinstance(model, TokenViT) and model.num_patches == 16
    import timm

    reference = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), reference(x))


def test_keep_idx_gathers_patches_after_position_embedding() -> None:
    tokens = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)  # [cls, p0..p3]
    out = gather_tokens(tokens, torch.tensor([[3, 0], [1, 2]]), num_prefix_tokens=1)
    assert out[..., 0].tolist() == [[0, 4, 1], [5, 7, 8]]
    _, model = tiny_pair()
    x = torch.randn(2, 1, 28, 28)
    keep = torch.tensor([[0, 5, 48], [7, 8, 9]])
    embedded = model.embed(x, keep)
    full = model._pos_embed(model.patch_embed(x))
    assert embedded.shape == (2, 4, 32)
    torch.testing.assert_close(embedded[:, 0], full[:, 0])  # [CLS] always kept
    torch.testing.assert_close(embedded[1, 1:], full[1, 1 + keep[1]])


def test_kept_subset_equals_running_timm_blocks_on_that_subset() -> None:
    reference, model = tiny_pair()
    x = torch.randn(2, 1, 28, 28)
    keep = torch.tensor([[1, 2, 30, 40], [0, 10, 20, 48]])
    tokens = gather_tokens(reference._pos_embed(reference.patch_embed(x)), keep, 1)
    expected = reference.forward_head(reference.norm(reference.blocks(tokens)))
    torch.testing.assert_close(model(x, keep_idx=keep), expected)


@pytest.mark.parametrize("block", [0, 2])
def test_cls_attention_equals_explicit_softmax_row(block: int) -> None:
    _, model = tiny_pair()
    x = torch.randn(2, 1, 28, 28)
    keep = torch.tensor([[0, 3, 6, 9, 12], [1, 4, 7, 10, 13]])
    out = model.forward_tokens(x, keep_idx=keep, cls_attn_blocks=[block], collect_block_tokens=True)
    inputs = out.block_tokens[block - 1] if block else model.embed(x, keep)
    attn = model.blocks[block].attn
    b, n, c = inputs.shape
    qkv = attn.qkv(model.blocks[block].norm1(inputs)).reshape(b, n, 3, attn.num_heads, c // attn.num_heads)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    explicit = torch.softmax(q @ k.transpose(-2, -1) / (c // attn.num_heads) ** 0.5, dim=-1)
    expected = explicit.mean(dim=1)[:, 0, 1:]  # [CLS] row, patch columns
    assert out.cls_attn[block].dtype == torch.float32
    assert out.cls_attn[block].shape == (2, 5)
    torch.testing.assert_close(out.cls_attn[block], expected)
    assert attn.fused_attn  # the fused kernel was never switched off


def test_block_tokens_and_negative_block_index() -> None:
    _, model = tiny_pair()
    out = model.forward_tokens(torch.randn(1, 1, 28, 28), cls_attn_blocks=[-1], collect_block_tokens=True)
    assert list(out.cls_attn) == [2]
    assert [t.shape for t in out.block_tokens] == [torch.Size([1, 50, 32])] * 3


def test_gmacs_fall_in_proportion_when_half_the_tokens_are_kept() -> None:
    _, model = tiny_pair()
    x = torch.randn(1, 1, 28, 28)
    full = gmacs(model, x)
    half = gmacs(model, x, keep_idx=torch.arange(24)[None])
    # patch embedding runs on all 49 patches; blocks on 25 of 50 tokens
    assert 0.45 < half / full < 0.56


def test_gmacs_count_attention_on_cpu_fused_kernel() -> None:
    _, model = tiny_pair()
    x = torch.randn(1, 1, 28, 28)
    fused = gmacs(model, x)
    for blk in model.blocks:
        blk.attn.fused_attn = False
    assert gmacs(model, x) == pytest.approx(fused)
    d, n, depth = 32, 50, 3
    per_block = n * d * 3 * d + n * d * d + 2 * n * d * 4 * d + 2 * n * n * d
    head_and_embed = 49 * 16 * d + d * 10
    assert fused == pytest.approx((depth * per_block + head_and_embed) / 1e9, rel=1e-3)


def test_unknown_and_unsupported_models() -> None:
    with pytest.raises(ValueError, match="unknown model name 'resnet50'"):
        ModelSpec(name="resnet50", img_size=28, patch_size=4, drop_path_rate=0.0)
    with pytest.raises(MaskpruneError, match="does not exist; give a local .safetensors"):
        build_model(
            ModelSpec(
                name="vit_tiny_patch16_224",
                img_size=32,
                patch_size=8,
                drop_path_rate=0.0,
                pretrained_file="pretrained/nonexistent.safetensors",
            ),
            10,
            3,
        )
    with pytest.raises(MaskpruneError, match="pretrained_file applies to timm names only"):
        build_model(updated(cpu_params().models.student, pretrained_file="pretrained/x.safetensors"), 10, 1)
    with pytest.raises(ValueError, match="is a distilled DeiT"):  # it would fail only when the stage builds it
        ModelSpec(name="deit_small_distilled_patch16_224", img_size=28, patch_size=4, drop_path_rate=0.0)
    with pytest.raises(
        ValueError, match="no pretrained tag 'nope' for 'vit_small_patch16_224'; use one of .*augreg_in21k"
    ):
        ModelSpec(name="vit_small_patch16_224.nope", img_size=28, patch_size=4, drop_path_rate=0.0)


def test_a_timm_name_with_a_pretrained_tag_builds_the_same_architecture() -> None:
    tagged = ModelSpec(name="vit_tiny_patch16_224.augreg_in21k", img_size=32, patch_size=8, drop_path_rate=0.0)
    plain = ModelSpec(name="vit_tiny_patch16_224", img_size=32, patch_size=8, drop_path_rate=0.0)
    a, b = build_model(tagged, 10, 1), build_model(plain, 10, 1)
    assert type(a) is TokenViT and {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }


def test_local_timm_weights_load_offline(tmp_path) -> None:
    from safetensors.torch import save_file

    spec = ModelSpec(name="vit_tiny_patch16_224", img_size=32, patch_size=8, drop_path_rate=0.0)
    source = build_model(spec, num_classes=10, in_chans=3)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = build_model(spec.model_copy(update={"pretrained_file": str(path)}), num_classes=10, in_chans=3)
    torch.testing.assert_close(
        loaded.state_dict()["blocks.0.attn.qkv.weight"], source.state_dict()["blocks.0.attn.qkv.weight"]
    )


def test_cls_attention_rows_are_probabilities_and_the_block_matches_timm() -> None:
    _, model = tiny_pair()
    tokens = model.embed(torch.randn(2, 1, 28, 28))
    blk = model.blocks[1]
    after_attention, q, k = attention_residual(blk, tokens)
    row = cls_attention(q, k, blk.attn.scale, num_prefix_tokens=0)
    torch.testing.assert_close(row.sum(-1), torch.ones(2))
    torch.testing.assert_close(mlp_residual(blk, after_attention), blk(tokens))  # timm's own Block.forward
