"""EViT (Liang et al., ICLR 2022): keep the patch tokens the [CLS] token attends to most.

Inside each pruning block, attention runs on all tokens; then only the `ceil(r * t)` patch
tokens (of the `t` present) with the highest head-averaged [CLS] attention go on to the MLP and
the later blocks. With `fuse_token`, the dropped ones are summed into one extra token, weighted by
their raw [CLS] attention (not renormalised, as in the paper's code); that token competes in the
next pruning block like any other. EViT adds no parameters: any TokenViT checkpoint loads as is.
"""

from __future__ import annotations

import math

import torch

from maskprune.models.vit import TokenViT, TokenViTOutput, attention_residual, cls_attention, mlp_residual


def evit_kept(tokens: int, keep_rate: float) -> int:
    """Patch tokens EViT keeps of `tokens`: ceil(rate * tokens) (float error forgiven), at least 1."""
    return max(1, min(tokens, math.ceil(keep_rate * tokens - 1e-6)))


def evit_prune(
    tokens: torch.Tensor,
    cls_attn: torch.Tensor,
    patch_idx: torch.Tensor,
    keep_rate: float,
    num_prefix_tokens: int,
    fuse_token: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the most attended patch tokens, optionally fusing the rest into one.

    Args:
        tokens: `[batch, prefix + t, channels]`, after the block's attention residual.
        cls_attn: `[batch, t]` head-averaged [CLS] attention over the non-prefix tokens.
        patch_idx: `[batch, t]` input patch index of each non-prefix token (-1: fused token).
    Returns:
        tokens `[batch, prefix + k (+1), channels]` (most attended first, fused token last) and
        their patch indices `[batch, k (+1)]`.
    """
    t = tokens.shape[1] - num_prefix_tokens
    k = evit_kept(t, keep_rate)
    if k >= t:
        return tokens, patch_idx
    prefix, patches = tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]
    top = cls_attn.topk(k, dim=1, largest=True, sorted=True).indices  # [batch, k]
    kept = patches.gather(1, top.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    parts, kept_idx = [prefix, kept], patch_idx.gather(1, top)
    if fuse_token:
        weights = cls_attn.scatter(1, top, 0.0).to(patches.dtype)  # attention of the dropped tokens
        parts.append(torch.bmm(weights.unsqueeze(1), patches))  # [batch, 1, channels]
        kept_idx = torch.cat([kept_idx, kept_idx.new_full((len(kept_idx), 1), -1)], dim=1)
    return torch.cat(parts, dim=1), kept_idx


class EViT(TokenViT):
    """TokenViT that keeps a fraction `keep_rate` of the patch tokens in each of `prune_blocks`.

    Set by `make_evit`. During training `train_keep_rate` (the warm-up schedule) overrides
    `keep_rate` when set; evaluation always runs at `keep_rate`.
    """

    prune_blocks: tuple[int, ...]
    keep_rate: float
    fuse_token: bool
    train_keep_rate: float | None

    def forward_block(self, index: int, blk: torch.nn.Module, out: TokenViTOutput, want_cls_attn: bool) -> torch.Tensor:
        rate = self.train_keep_rate if self.training and self.train_keep_rate is not None else self.keep_rate
        if index not in self.prune_blocks or rate >= 1.0:
            return super().forward_block(index, blk, out, want_cls_attn)
        tokens, q, k = attention_residual(blk, out.tokens)
        attn = cls_attention(q, k, blk.attn.scale, self.num_prefix_tokens)
        if want_cls_attn:
            out.cls_attn[index] = attn
        tokens, out.patch_idx = evit_prune(tokens, attn, out.patch_idx, rate, self.num_prefix_tokens, self.fuse_token)
        out.kept_patches[index] = out.patch_idx
        return mlp_residual(blk, tokens)


def make_evit(model: TokenViT, prune_blocks: tuple[int, ...], keep_rate: float, fuse_token: bool = True) -> EViT:
    """Turn `model` into an EViT in place (a `__class__` swap; weights untouched)."""
    model.__class__ = EViT
    model.prune_blocks = tuple(prune_blocks)
    model.keep_rate = keep_rate
    model.fuse_token = fuse_token
    model.train_keep_rate = None
    return model  # type: ignore[return-value]
