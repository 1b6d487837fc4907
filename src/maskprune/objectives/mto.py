"""MTO (Choi et al., ECCV 2024): masked-token heterogeneity and the three losses that shape it.

Definitions, on the layers that carry mask tokens (MAE: the decoder; SimMIM: the
encoder), with X the patch tokens of a layer `[batch, patches, channels]`, M the masked and V the
visible patches:

    H_l   = mean over masked rows of the entropy of row-softmax(X_M X_V^T)       (heterogeneity)
    L_spa = sum over visible rows i of the entropy of row-softmax(X X^T)_i      (input embedding)
    L_e   = 1 / (H_0 + eps)
    L_r   = sum_l log(1 + exp(H_l - H_{l-1}))                                      (H falls with depth)

Why L_r differs from the paper's printed Eq. 7, softplus(H_{l-1} - H_l): that form is small when H
*rises* layer by layer, while the paper's text asks three times for the opposite ("subsequent
layers ... progressively lower heterogeneity", "a gradual reduction"), says L_e (which raises H_0)
and L_r act "in a common direction", and warns that L_r alone risks "all heterogeneity converging
to zero", which only a loss that pushes deeper layers *down* can do. The printed sign is taken as a
typo; `direction="printed"` keeps it as an ablation (`pretrain.mto.rank_direction`).

Choices the paper leaves open, made here (and tested):
  - Scaling: affinities are X X^T / sqrt(channels), as in attention. Unscaled dot products of
    tokens several hundred wide saturate the softmax, so every entropy is ~0 and has no gradient.
  - Tokens: prefix tokens ([CLS]) enter neither rows nor columns; H and the losses are about
    patch tokens only.
  - L_spa's columns: every patch token of the layer (visible and masked) except the row's own
    token, whose self-affinity |x_i|^2 would otherwise dominate its row and make the entropy small
    for free.
  - Batches: L_spa sums over visible rows and averages over images; H averages over masked rows
    and images. Entropies are in nats and computed in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import get_args

import torch
import torch.nn.functional as F

from maskprune.config import RankDirection

RANK_DIRECTIONS: tuple[str, ...] = get_args(RankDirection)


def affinity(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Scaled affinity logits `[batch, r, k]` of rows `[batch, r, c]` to columns `[batch, k, c]`."""
    return rows.float() @ cols.float().transpose(-2, -1) / math.sqrt(rows.shape[-1])


def row_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of the row-softmax of `logits` `[..., r, k]` -> `[..., r]`; -inf entries get zero mass."""
    log_p = logits.float().log_softmax(dim=-1)
    p = log_p.exp()
    return -(p * log_p.masked_fill(p == 0, 0.0)).sum(dim=-1)


def take(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The tokens `[batch, n, c]` at patch indices `idx` `[batch, k]` -> `[batch, k, c]`."""
    return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def heterogeneity(tokens: torch.Tensor, masked_idx: torch.Tensor, visible_idx: torch.Tensor) -> torch.Tensor:
    """H of one layer: mean entropy of the masked tokens' affinity to the visible ones.

    Args:
        tokens: patch tokens of the layer in input-patch order, `[batch, patches, channels]`.
        masked_idx: `[batch, m]` masked patch indices.
        visible_idx: `[batch, v]` visible patch indices.
    Returns:
        a scalar; `log(v)` when every masked token is equally similar to every visible one.
    """
    return row_entropy(affinity(take(tokens, masked_idx), take(tokens, visible_idx))).mean()


def spatial_loss(tokens: torch.Tensor, visible_idx: torch.Tensor) -> torch.Tensor:
    """L_spa: summed entropy of each visible token's affinity to every other patch token.

    `tokens` `[batch, patches, channels]` (the layer's input embedding), `visible_idx` `[batch, v]`.
    """
    logits = affinity(take(tokens, visible_idx), tokens)  # [batch, v, patches]
    own = F.one_hot(visible_idx, tokens.shape[1]).bool()
    return row_entropy(logits.masked_fill(own, -torch.inf)).sum(dim=1).mean()


def embedding_loss(h0: torch.Tensor, eps: float) -> torch.Tensor:
    """L_e = 1 / (H_0 + eps)."""
    return 1.0 / (h0 + eps)


def rank_loss(h: Sequence[torch.Tensor], direction: RankDirection = "falling") -> torch.Tensor:
    """L_r over consecutive layers' heterogeneity `h` (scalars, input layer first).

    "falling" (the paper's text): sum softplus(H_l - H_{l-1}), small while H falls layer by layer.
    "printed" (the paper's Eq. 7 as printed): sum softplus(H_{l-1} - H_l), small while H rises.
    """
    if len(h) < 2:
        raise ValueError("L_r needs the heterogeneity of at least two layers")
    if direction not in RANK_DIRECTIONS:
        raise ValueError(f"rank direction {direction!r} is not one of {RANK_DIRECTIONS}")
    stacked = torch.stack(list(h))
    rise = stacked[1:] - stacked[:-1]
    return F.softplus(rise if direction == "falling" else -rise).sum()
