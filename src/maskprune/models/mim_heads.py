"""Masked image modelling around a TokenViT encoder: MAE and SimMIM.

MAE (He et al., CVPR 2022; facebookresearch/mae): the encoder runs on the visible patches only
(TokenViT's `keep_idx`); a light decoder puts the encoded tokens back in place, fills the masked
places with a learnable mask token, adds its own fixed 2-D sin-cos position embedding, and predicts
every patch's pixels; the loss is the MSE on masked patches against per-patch normalised pixels.

SimMIM (Xie et al., CVPR 2022; microsoft/SimMIM): the encoder runs on every patch, the masked
patch embeddings replaced by a learnable mask token before the position embedding; a linear head
predicts each patch's pixels; the loss is the L1 on masked pixels.

Both return the patch tokens of every layer that carries mask tokens (the layers MTO acts on):
MAE's decoder input and each decoder block's output; SimMIM's encoder input and each encoder
block's output. The encoder is a plain TokenViT (no head), so it is saved, fine-tuned and
distilled like any other backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block
from torch import nn

from maskprune.models.vit import InputMask, TokenViT

NORM_PIX_EPS = 1e-6


@dataclass
class MIMOutput:
    pred: torch.Tensor  # [batch, patches, patch_size^2 * chans] predicted pixels of every patch
    layers: list[torch.Tensor]  # per mask-carrying layer, patch tokens [batch, patches, channels]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Images `[batch, c, h, w]` -> patches `[batch, (h/p)(w/p), p*p*c]`, row-major as PatchEmbed."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def normalized_targets(patches: torch.Tensor) -> torch.Tensor:
    """Each patch `[..., values]` standardised by its own mean and variance (MAE's norm_pix_loss)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + NORM_PIX_EPS).sqrt()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """MSE per patch, averaged over masked patches (`masked` `[batch, patches]` bool)."""
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (per_patch * masked).sum() / masked.sum().clamp_min(1)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the pixels (and channels) of masked patches."""
    per_patch = (pred.float() - target.float()).abs().mean(dim=-1)
    return (per_patch * masked).sum() / masked.sum().clamp_min(1)


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding `[grid*grid, dim]` (MAE's `get_2d_sincos_pos_embed`)."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )

    def axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([axis(xs), axis(ys)], dim=1).float()


def masked_indices(keep_idx: torch.Tensor, num_patches: int) -> torch.Tensor:
    """The patches not in `keep_idx` `[batch, kept]`: `[batch, patches - kept]`, ascending."""
    keep = torch.zeros(keep_idx.shape[0], num_patches, dtype=torch.bool, device=keep_idx.device)
    keep.scatter_(1, keep_idx, True)
    return (~keep).nonzero()[:, 1].reshape(keep_idx.shape[0], num_patches - keep_idx.shape[1])


def unshuffle(
    visible: torch.Tensor, keep_idx: torch.Tensor, mask_token: torch.Tensor, num_patches: int
) -> torch.Tensor:
    """Put `visible` `[batch, kept, c]` back at their patches `keep_idx` `[batch, kept]`; mask tokens elsewhere.

    Returns `[batch, patches, c]` in input-patch order (MAE's `ids_restore` step).
    """
    b, _, c = visible.shape
    full = mask_token.to(visible.dtype).expand(b, num_patches, c)
    return full.scatter(1, keep_idx.unsqueeze(-1).expand(-1, -1, c), visible)


class MAE(nn.Module):
    """An MAE around `encoder`: `forward(images, keep_idx)` -> `MIMOutput` (see module doc).

    Args:
        encoder: the backbone (its classifier head is not used).
        decoder_dim / decoder_depth / decoder_heads: the light decoder's width, blocks and heads.
        in_chans: image channels (the predicted patch has patch_size^2 * in_chans values).
    """

    def __init__(self, encoder: TokenViT, decoder_dim: int, decoder_depth: int, decoder_heads: int, in_chans: int):
        super().__init__()
        self.encoder = encoder
        patch = encoder.patch_embed.patch_size[0]
        grid = encoder.patch_embed.grid_size[0]
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        prefix = torch.zeros(encoder.num_prefix_tokens, decoder_dim)
        self.register_buffer("decoder_pos_embed", torch.cat([prefix, sincos_pos_embed(decoder_dim, grid)])[None])
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch * patch * in_chans)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, images: torch.Tensor, keep_idx: torch.Tensor) -> MIMOutput:
        enc = self.encoder
        p, n = enc.num_prefix_tokens, enc.num_patches
        encoded = self.decoder_embed(enc.forward_tokens(images, keep_idx).tokens)
        patches = unshuffle(encoded[:, p:], keep_idx, self.mask_token, n)
        tokens = torch.cat([encoded[:, :p], patches], dim=1) + self.decoder_pos_embed.to(encoded.dtype)
        layers = [tokens[:, p:]]
        for blk in self.decoder_blocks:
            tokens = blk(tokens)
            layers.append(tokens[:, p:])
        return MIMOutput(self.decoder_pred(self.decoder_norm(tokens))[:, p:], layers)


class SimMIM(nn.Module):
    """A SimMIM around `encoder`: mask tokens at the encoder input, a linear pixel head."""

    def __init__(self, encoder: TokenViT, in_chans: int):
        super().__init__()
        self.encoder = encoder
        patch = encoder.patch_embed.patch_size[0]
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        self.decoder_pred = nn.Linear(encoder.embed_dim, patch * patch * in_chans)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, images: torch.Tensor, keep_idx: torch.Tensor) -> MIMOutput:
        enc = self.encoder
        p = enc.num_prefix_tokens
        masked = torch.ones(images.shape[0], enc.num_patches, dtype=torch.bool, device=images.device)
        masked.scatter_(1, keep_idx, False)
        out = enc.forward_tokens(images, input_mask=InputMask(masked, self.mask_token), collect_block_tokens=True)
        layers = [out.embedded[:, p:], *(t[:, p:] for t in out.block_tokens)]
        return MIMOutput(self.decoder_pred(out.tokens[:, p:]), layers)


def mim_loss(
    objective: str,
    pred: torch.Tensor,
    images: torch.Tensor,
    patch_size: int,
    masked: torch.Tensor,
    norm_pix: bool,
) -> torch.Tensor:
    """MAE: MSE on masked patches (per-patch normalised targets if `norm_pix`); SimMIM: L1."""
    target = patchify(images, patch_size)
    if objective == "mae":
        return masked_mse(pred, normalized_targets(target) if norm_pix else target, masked)
    return masked_l1(pred, target, masked)


def check_decoder(encoder_dim: int, decoder_dim: int, decoder_heads: int) -> None:
    """MAE's decoder is light: at most as wide as the encoder, with whole heads and a 2-D sin-cos width."""
    if decoder_dim > encoder_dim:
        raise ValueError(
            f"pretrain.mae.decoder_dim {decoder_dim} is wider than the encoder ({encoder_dim}); "
            f"MAE's decoder must be light: use at most {encoder_dim}"
        )
    if decoder_dim % decoder_heads or decoder_dim % 4:
        raise ValueError(
            f"pretrain.mae.decoder_dim {decoder_dim} must be divisible by decoder_heads "
            f"({decoder_heads}) and by 4 (sin-cos position embedding)"
        )
