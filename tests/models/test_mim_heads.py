"""MAE and SimMIM around a TokenViT: token order, targets, losses, position embeddings, encoder cost."""

from __future__ import annotations

import math

import pytest
import torch

from maskprune.masking import random_keep_idx
from maskprune.models.mim_heads import (
    MAE,
    SimMIM,
    masked_indices,
    masked_mse,
    mim_loss,
    normalized_targets,
    patchify,
    sincos_pos_embed,
    unshuffle,
)
from maskprune.models.vit import InputMask, TokenViT
from stages.pretrain import encoder_cost


def encoder(depth: int = 2) -> TokenViT:
    torch.manual_seed(0)
    return TokenViT(img_size=16, patch_size=4, in_chans=1, num_classes=0, embed_dim=32, depth=depth, num_heads=2)


def test_unshuffle_restores_token_order_exactly() -> None:
    tokens = torch.randn(3, 16, 8)
    mask_token = torch.randn(1, 1, 8)
    perm = torch.stack([torch.randperm(16) for _ in range(3)])  # a full shuffle and its inverse
    torch.testing.assert_close(
        unshuffle(tokens.gather(1, perm[..., None].expand(-1, -1, 8)), perm, mask_token, 16),
        tokens,
        rtol=0,
        atol=0,
    )
    keep = random_keep_idx(3, 16, 4)
    visible = tokens.gather(1, keep[..., None].expand(-1, -1, 8))
    restored = unshuffle(visible, keep, mask_token, 16)
    masked = masked_indices(keep, 16)
    assert masked.shape == (3, 12) and not set(masked[0].tolist()) & set(keep[0].tolist())
    torch.testing.assert_close(restored.gather(1, keep[..., None].expand(-1, -1, 8)), visible, rtol=0, atol=0)
    assert (restored.gather(1, masked[..., None].expand(-1, -1, 8)) == mask_token).all()


def test_patchify_matches_patch_embed_order_and_targets_are_standardised() -> None:
    images = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    patches = patchify(images, 4)
    assert patches.shape == (2, 16, 16)
    torch.testing.assert_close(patches[0, 1], images[0, 0, 0:4, 4:8].reshape(-1))  # row-major: patch 1 is right of 0
    torch.testing.assert_close(patches[1, 4], images[1, 0, 4:8, 0:4].reshape(-1))
    targets = normalized_targets(torch.randn(5, 7, 12) * 3 + 2)
    torch.testing.assert_close(targets.mean(-1), torch.zeros(5, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.std(-1), torch.ones(5, 7), atol=1e-4, rtol=0)


def test_losses_only_count_masked_patches() -> None:
    pred, target = torch.zeros(1, 4, 2), torch.tensor([[[1.0, 1.0], [2.0, 2.0], [9.0, 9.0], [9.0, 9.0]]])
    masked = torch.tensor([[True, True, False, False]])
    assert masked_mse(pred, target, masked).item() == pytest.approx((1 + 4) / 2)
    images = torch.ones(1, 1, 4, 4)
    pred = torch.full((1, 4, 4), 3.0)
    assert mim_loss("simmim", pred, images, 2, masked, norm_pix=False).item() == pytest.approx(2.0)


def test_sincos_position_embedding_by_hand() -> None:
    emb = sincos_pos_embed(8, grid=2)  # [4 positions, 8]: x half (sin, cos), then y half (sin, cos)
    omega = [1.0, 1.0 / 100]
    x, y = 1, 0  # position 1 of a 2x2 grid: column 1, row 0
    expected = [math.sin(x * w) for w in omega] + [math.cos(x * w) for w in omega]
    expected += [math.sin(y * w) for w in omega] + [math.cos(y * w) for w in omega]
    assert emb[1].tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed(6, 2)


def test_mae_encoder_sees_visible_patches_only_and_decoder_layers_carry_mask_tokens() -> None:
    mae = MAE(encoder(), decoder_dim=16, decoder_depth=3, decoder_heads=2, in_chans=1)
    images = torch.randn(2, 1, 16, 16)
    keep = random_keep_idx(2, 16, 4)
    seen = []
    handle = mae.encoder.blocks[0].register_forward_hook(lambda m, a, o: seen.append(o.shape))
    out = mae(images, keep)
    handle.remove()
    assert seen == [torch.Size([2, 5, 32])]  # [CLS] + 4 visible patches
    assert out.pred.shape == (2, 16, 16) and len(out.layers) == 4
    assert all(layer.shape == (2, 16, 16) for layer in out.layers)
    masked = masked_indices(keep, 16)
    expected = mae.mask_token[0, 0] + mae.decoder_pos_embed[0, 1:][masked[0]]
    torch.testing.assert_close(out.layers[0][0, masked[0]], expected)


def test_mae_encoder_gmacs_scale_with_the_visible_fraction() -> None:
    enc = TokenViT(img_size=28, patch_size=4, in_chans=1, num_classes=0, embed_dim=128, depth=6, num_heads=4)
    cost = encoder_cost(enc, visible=12, shape=(1, 28, 28), device=torch.device("cpu"))
    # blocks dominate and are linear in tokens but for attention: about (12 + 1) / (49 + 1) of full
    assert cost["encoder_gmacs_ratio"] == pytest.approx(13 / 50, rel=0.15)
    assert cost["encoder_gmacs_masked"] < cost["encoder_gmacs_full"]


def test_simmim_replaces_masked_patch_embeddings_before_the_position_embedding() -> None:
    model = SimMIM(encoder(), in_chans=1)
    keep = random_keep_idx(2, 16, 6)
    masked = torch.ones(2, 16, dtype=torch.bool).scatter(1, keep, False)
    images = torch.randn(2, 1, 16, 16)
    out = model.encoder.forward_tokens(images, input_mask=InputMask(masked, model.mask_token))
    pos = model.encoder.pos_embed[0, 1:]
    i = masked[0].nonzero()[0, 0]
    torch.testing.assert_close(out.embedded[0, 1 + i], model.mask_token[0, 0] + pos[i])
    j = keep[0, 0]
    torch.testing.assert_close(out.embedded[0, 1 + j], model.encoder.patch_embed(images)[0, j] + pos[j])
    result = model(images, keep)
    assert result.pred.shape == (2, 16, 16) and len(result.layers) == 3  # input + 2 blocks
