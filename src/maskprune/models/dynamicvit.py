"""DynamicViT (Rao et al., NeurIPS 2021): a learned scorer drops tokens before chosen blocks.

Before each pruning block a light predictor scores every patch token from its own features and
a policy-weighted global average. Training keeps all tokens in the tensor: hard Gumbel-softmax
decisions form a policy that masks the keys of every later attention (softmax in fp32, as the
paper's `softmax_with_policy`), so the predictor gets gradients. Inference sorts the scores and
physically keeps `floor(n * r^s)` of the `n` input patches after pruning stage `s` = 1, 2, 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from maskprune.models.vit import (
    TokenViT,
    TokenViTOutput,
    attention_heads,
    attention_output,
    gather_tokens,
    mlp_residual,
)

POLICY_EPS = 1e-6


class TokenScorer(nn.Module):
    """DynamicViT's `PredictorLG`: per-token (keep, drop) log-probabilities.

    Input `[batch, t, channels]` tokens and the previous policy `[batch, t, 1]`; output
    `[batch, t, 2]`. Half the channels stay local, the other half become a policy-weighted mean.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 2),
            nn.LogSoftmax(dim=-1),
        )

    def forward(self, tokens: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(tokens)
        half = x.shape[-1] // 2
        local, glob = x[..., :half], x[..., half:]
        glob = (glob * policy).sum(dim=1, keepdim=True) / policy.sum(dim=1, keepdim=True).clamp_min(POLICY_EPS)
        return self.out_conv(torch.cat([local, glob.expand(-1, x.shape[1], -1)], dim=-1))


def policy_softmax(logits: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """Attention weights `[batch, heads, t, t]` over the keys the policy `[batch, t, 1]` keeps.

    Every token still attends to itself; computed in fp32 and smoothed by eps as the paper's
    `softmax_with_policy`, so gradients reach the policy.

    Modifications: the logits are shifted by the largest *kept* key's, not the largest of all, and
    a dropped key's weight is capped at that key's. The forward pass is the same softmax over the
    kept keys. So is the gradient to the policy, unless a dropped key outscores every kept one:
    then the paper's kept weights underflow, the row sums to about eps, and that key's gradient
    grows to 1/eps. Peaked attention makes this common (logit ranges up to 60 nats on the cpu
    profile): gradients of ~1e6 from the task loss drowned the kept-ratio loss, and the predictors
    stayed at a fifth of a 1.0 target (measured). Here it is at most 1, as if the dropped key
    merely tied the best kept one.
    """
    t = policy.shape[1]
    keys = policy.reshape(policy.shape[0], 1, 1, t).float()
    eye = torch.eye(t, device=logits.device, dtype=torch.float32).view(1, 1, t, t)
    keys = keys + (1.0 - keys) * eye
    logits = logits.float()
    shift = logits.masked_fill(keys == 0, float("-inf")).amax(dim=-1, keepdim=True)
    weights = (logits - shift).clamp_max(0.0).exp() * keys
    return (weights + POLICY_EPS / t) / (weights.sum(dim=-1, keepdim=True) + POLICY_EPS)


def policy_block(blk: nn.Module, tokens: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """A timm `Block` whose attention only reads the keys that `policy` `[batch, t, 1]` keeps."""
    attn = blk.attn
    q, k, v = attention_heads(attn, blk.norm1(tokens))
    weights = attn.attn_drop(policy_softmax((q * attn.scale) @ k.transpose(-2, -1), policy))
    mixed = attention_output(attn, weights.to(v.dtype) @ v)
    return mlp_residual(blk, tokens + blk.drop_path1(blk.ls1(mixed)))


def pruning_stage_keep(num_patches: int, keep_rate: float, stage: int) -> int:
    """Patches left after pruning stage `stage` (1-based): floor(n * r^stage), at least 1."""
    return max(1, int(num_patches * keep_rate**stage + 1e-6))


@dataclass
class DynamicViTOutput(TokenViTOutput):
    input_patches: int = 0  # patch tokens entering the first pruning stage
    policy: torch.Tensor | None = None  # training: [batch, patches, 1] current keep decisions
    decisions: list[torch.Tensor] = field(default_factory=list)  # training: per stage [batch, patches]


class DynamicViT(TokenViT):
    """TokenViT with a `TokenScorer` before each of `prune_blocks` (set up by `make_dynamicvit`).

    `forward(x, return_policy=True)` in training mode also returns the final patch tokens, the
    final policy and each stage's decisions, which the DynamicViT loss needs.
    """

    output_type = DynamicViTOutput
    prune_blocks: tuple[int, ...]
    keep_rate: float
    score_predictor: nn.ModuleList

    def draw_decisions(self, log_probs: torch.Tensor) -> torch.Tensor:
        """Hard keep decisions `[batch, t, 1]` from `[batch, t, 2]` scores (straight-through Gumbel)."""
        return F.gumbel_softmax(log_probs.float(), hard=True)[..., :1]

    def forward_block(  # type: ignore[override]
        self, index: int, blk: nn.Module, out: DynamicViTOutput, want_cls_attn: bool
    ) -> torch.Tensor:
        p = self.num_prefix_tokens
        if index in self.prune_blocks:
            stage = self.prune_blocks.index(index)
            patches = out.tokens[:, p:]
            if stage == 0:
                out.input_patches = patches.shape[1]
            if self.training:
                previous = out.policy if out.policy is not None else patches.new_ones(*patches.shape[:2], 1)
                decision = self.draw_decisions(self.score_predictor[stage](patches, previous)) * previous
                out.policy = decision
                out.decisions.append(decision.squeeze(-1))
            else:
                scores = self.score_predictor[stage](patches, patches.new_ones(*patches.shape[:2], 1))[..., 0]
                keep = pruning_stage_keep(out.input_patches, self.keep_rate, stage + 1)
                top = scores.topk(min(keep, patches.shape[1]), dim=1, sorted=False).indices
                out.tokens = gather_tokens(out.tokens, top, p)
                out.patch_idx = out.patch_idx.gather(1, top)
                out.kept_patches[index] = out.patch_idx
        if self.training and out.policy is not None:
            prefix = out.policy.new_ones(out.policy.shape[0], p, 1)
            return policy_block(blk, out.tokens, torch.cat([prefix, out.policy], dim=1))
        return super().forward_block(index, blk, out, want_cls_attn)

    def forward(
        self,
        x: torch.Tensor,
        keep_idx: torch.Tensor | None = None,
        return_cls_attn: bool = False,
        return_policy: bool = False,
    ):  # noqa: ANN201 - logits, or logits with extras
        """Logits; with `return_policy` (training) also `(patch tokens, final policy, decisions)`.

        The extras come out of `forward` itself so that DDP and torch.compile wrappers see them.
        """
        if not return_policy:
            return super().forward(x, keep_idx, return_cls_attn)
        out = self.forward_tokens(x, keep_idx)
        return (
            self.forward_head(out.tokens),
            out.tokens[:, self.num_prefix_tokens :],
            out.policy,
            out.decisions,
        )


def make_dynamicvit(model: TokenViT, prune_blocks: tuple[int, ...], keep_rate: float) -> DynamicViT:
    """Turn `model` into a DynamicViT in place: new scorers before `prune_blocks`, weights kept."""
    device = model.cls_token.device if model.cls_token is not None else model.pos_embed.device
    model.__class__ = DynamicViT
    model.prune_blocks = tuple(prune_blocks)
    model.keep_rate = keep_rate
    model.score_predictor = nn.ModuleList(TokenScorer(model.embed_dim) for _ in prune_blocks).to(device)
    return model  # type: ignore[return-value]
