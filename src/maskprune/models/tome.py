"""ToMe (Bolya et al., ICLR 2023): training-free token merging, as a removable patch.

In every block, between attention and MLP, the tokens are split alternately into two sets A and
B; each A token finds its most similar B token (cosine of the head-averaged keys), and the `r`
most similar pairs are merged by a size-weighted average. [CLS] is never merged. Attention is
size-aware: log(size) is added to the attention logits, so a merged token counts as the tokens
it stands for. `apply_tome` swaps a TokenViT's class and `remove_tome` swaps it back;
`tome_matches` finds the merge rate whose GMACs come closest to a pruned model's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from maskprune.errors import MaskpruneError
from maskprune.measure import gmacs
from maskprune.models.vit import TokenViT, TokenViTOutput, attention_residual, mlp_residual

Merge = Callable[[torch.Tensor, str], torch.Tensor]


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Merge:
    """A function that merges `r` of the `t` tokens; token 0 ([CLS]) is protected.

    Args:
        metric: `[batch, t, c]` similarity features (ToMe: keys averaged over heads).
        r: tokens to remove, at most (t - 1) // 2.
    Returns:
        `merge(x, reduce)` mapping `[batch, t, c']` to `[batch, t - r, c']` (reduce: "sum",
        "mean", "amax"...): unmerged A tokens (in their order, [CLS] first), then the B tokens.
    """
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)  # [batch, |A|, |B|]
    scores[:, 0, :] = -torch.inf  # [CLS] is the first A token
    best, best_b = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    merged_a, kept_a = order[:, :r], order[:, r:].sort(dim=-1).values
    into_b = best_b.gather(1, merged_a)

    def merge(x: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
        src, dst = x[:, ::2], x[:, 1::2]
        c = x.shape[-1]
        kept = src.gather(1, kept_a.unsqueeze(-1).expand(-1, -1, c))
        moved = src.gather(1, merged_a.unsqueeze(-1).expand(-1, -1, c))
        dst = dst.scatter_reduce(1, into_b.unsqueeze(-1).expand(-1, -1, c), moved, reduce=reduce)
        return torch.cat([kept, dst], dim=1)

    return merge


def merge_weighted(merge: Merge, tokens: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average of merged tokens `[batch, t, c]`; sizes `[batch, t, 1]` add up."""
    total = merge(tokens * size, "sum")
    size = merge(size, "sum")
    return total / size, size


def max_tome_r(num_patches: int, depth: int) -> int:
    """The largest r that merges exactly r tokens in each of `depth` blocks and keeps a patch."""
    best = 0
    for r in range(1, num_patches + 1):
        t = num_patches + 1
        for _ in range(depth):
            if r > (t - 1) // 2:
                return best
            t -= r
        if t - 1 < 1:
            return best
        best = r
    return best


def check_tome_r(r: int, num_patches: int, depth: int) -> int:
    limit = max_tome_r(num_patches, depth)
    if not 0 <= r <= limit:
        raise MaskpruneError(
            f"ToMe r={r} must lie in [0, {limit}] for {num_patches} patches and {depth} "
            "blocks: more would merge [CLS] or leave no patch token; lower r"
        )
    return r


@dataclass
class ToMeOutput(TokenViTOutput):
    size: torch.Tensor | None = None  # [batch, t, 1] input tokens each token stands for


class ToMeViT(TokenViT):
    """TokenViT that merges `tome_r` tokens in every block (set up by `apply_tome`).

    NOTE: as in ToMe, r is lowered for an input with too few tokens (e.g. occluded images) so that
    [CLS] and at least one patch always remain.
    """

    output_type = ToMeOutput
    tome_r: int

    def forward_block(  # type: ignore[override]
        self, index: int, blk: torch.nn.Module, out: ToMeOutput, want_cls_attn: bool
    ) -> torch.Tensor:
        t = out.tokens.shape[1]
        r = min(self.tome_r, (t - 1) // 2)
        if r <= 0:
            return super().forward_block(index, blk, out, want_cls_attn)
        size = out.size if out.size is not None else out.tokens.new_ones(out.tokens.shape[0], t, 1)
        bias = size.squeeze(-1).log()[:, None, None, :].to(_attention_dtype(out.tokens))
        tokens, _, k = attention_residual(blk, out.tokens, attn_mask=bias)
        b = tokens.shape[0]
        merge = bipartite_soft_matching(k.mean(dim=1).float(), r)  # keys averaged over heads: [b, t, head_dim]
        tokens, out.size = merge_weighted(merge, tokens, size.to(tokens.dtype))
        labels = torch.cat([out.patch_idx.new_full((b, 1), -1), out.patch_idx], dim=1)  # [CLS] = -1
        out.patch_idx = merge(labels.unsqueeze(-1), "amax")[:, 1:, 0]  # a merged token keeps one label
        return mlp_residual(blk, tokens)


def _attention_dtype(tokens: torch.Tensor) -> torch.dtype:
    device = tokens.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tokens.dtype


def apply_tome(model: TokenViT, r: int) -> ToMeViT:
    """Make `model` merge `r` tokens per block (in place; no weights change)."""
    if model.num_prefix_tokens != 1 or model.global_pool != "token":
        raise MaskpruneError(
            "ToMe here needs exactly one prefix token ([CLS]) and [CLS] pooling; "
            f"this model has {model.num_prefix_tokens} and pool {model.global_pool!r}"
        )
    check_tome_r(r, model.num_patches, len(model.blocks))
    model.__class__ = ToMeViT
    model.tome_r = r
    return model  # type: ignore[return-value]


def remove_tome(model: ToMeViT) -> TokenViT:
    """Undo `apply_tome`: the plain TokenViT again."""
    model.__class__ = TokenViT
    model.__dict__.pop("tome_r", None)
    return model


def tome_matches(base: TokenViT, targets: dict[str, float], example: torch.Tensor) -> dict[int, list[str]]:
    """ToMe merge rate r -> the models (name -> GMACs) whose GMACs it matches most closely."""
    costs = {
        r: gmacs(apply_tome(copy.deepcopy(base), r), example)
        for r in range(1, max_tome_r(base.num_patches, len(base.blocks)) + 1)
    }
    matches: dict[int, list[str]] = {}
    for name, target in targets.items():
        r = min(costs, key=lambda k: abs(costs[k] - target))
        matches.setdefault(r, []).append(name)
    return dict(sorted(matches.items()))
