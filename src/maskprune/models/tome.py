"""ToMe (Bolya et al., ICLR 2023): training-free token merging, as a removable patch.

In every block, between attention and MLP, the tokens are split alternately into two sets A and
B; each A token finds its most similar B token (cosine of the head-averaged keys), and the `r`
most similar pairs are merged by a size-weighted average. [CLS] is never merged. Attention is
size-aware: log(size) is added to the attention logits, so a merged token counts as the tokens
it stands for. As in ToMe's code, `r` is one int for every block or a per-block schedule.

`apply_tome` swaps a TokenViT's class (after `check_tome_schedule` validates the schedule) and
`remove_tome` swaps it back; `tome_schedules` lists the schedules searched, from no merging to
the most merging, and `tome_schedule_for` picks the one whose GMACs come closest to a target
(e.g. a pruned model's).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
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


def tome_tokens(
    schedule: Sequence[int],
    num_patches: int,
) -> list[int]:
    """Tokens ([CLS] included) entering each block under `schedule`, then leaving the last one."""
    tokens = [num_patches + 1]
    for r in schedule:
        tokens.append(tokens[-1] - r)
    return tokens


def _overmerged(
    schedule: Sequence[int],
    num_patches: int,
) -> tuple[int, int] | None:
    """(block, tokens entering it) of the first block merging more than (t - 1) // 2; None if none."""
    for block, (r, t) in enumerate(zip(schedule, tome_tokens(schedule, num_patches), strict=False)):
        if r > (t - 1) // 2:
            return block, t
    return None


def max_tome_r(num_patches: int, depth: int) -> int:
    """The largest r that merges exactly r tokens in each of `depth` blocks and keeps a patch."""
    return max(r for r in range(num_patches + 1) if _overmerged([r] * depth, num_patches) is None)


def check_tome_schedule(
    r: int | Sequence[int],
    num_patches: int,
    depth: int,
) -> list[int]:
    """The per-block schedule `r` stands for (an int: that r in every block), validated.

    A block with t tokens may merge at most (t - 1) // 2, its A tokens other than [CLS]: that
    keeps [CLS] unmerged and at least one patch token (t - (t - 1) // 2 >= 2).
    """
    if isinstance(r, int):
        limit = max_tome_r(num_patches, depth)
        if not 0 <= r <= limit:
            raise MaskpruneError(
                f"ToMe r={r} must lie in [0, {limit}] for {num_patches} patches and {depth} "
                "blocks: more would merge [CLS] or leave no patch token; lower r"
            )
        return [r] * depth
    schedule = list(r)
    if len(schedule) != depth:
        raise MaskpruneError(
            f"ToMe schedule {schedule} has {len(schedule)} entries for {depth} blocks; "
            "give one r per block (or one int for every block)"
        )
    negative = [block for block, merged in enumerate(schedule) if merged < 0]
    if negative:
        raise MaskpruneError(f"ToMe schedule {schedule}: block(s) {negative} have r < 0; give every block an r >= 0")
    bad = _overmerged(schedule, num_patches)
    if bad is not None:
        block, t = bad
        raise MaskpruneError(
            f"ToMe schedule {schedule} merges {schedule[block]} of the {t} tokens entering block {block}: "
            f"more than {(t - 1) // 2} would merge [CLS] or leave no patch token; lower r in block {block} "
            "or before it"
        )
    return schedule


@dataclass
class ToMeOutput(TokenViTOutput):
    size: torch.Tensor | None = None  # [batch, t, 1] input tokens each token stands for


class ToMeViT(TokenViT):
    """TokenViT that merges `tome_schedule[i]` tokens in block i (set up by `apply_tome`).

    NOTE: as in ToMe, r is lowered for an input with too few tokens (e.g. occluded images) so that
    [CLS] and at least one patch always remain.
    """

    output_type = ToMeOutput
    tome_schedule: list[int]  # r per block

    def forward_block(  # type: ignore[override]
        self, index: int, blk: torch.nn.Module, out: ToMeOutput, want_cls_attn: bool
    ) -> torch.Tensor:
        t = out.tokens.shape[1]
        r = min(self.tome_schedule[index], (t - 1) // 2)
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


def apply_tome(
    model: TokenViT,
    r: int | Sequence[int],
) -> ToMeViT:
    """Make `model` merge `r` tokens per block, or `r[i]` in block i (in place; no weights change)."""
    if model.num_prefix_tokens != 1 or model.global_pool != "token":
        raise MaskpruneError(
            "ToMe here needs exactly one prefix token ([CLS]) and [CLS] pooling; "
            f"this model has {model.num_prefix_tokens} and pool {model.global_pool!r}"
        )
    schedule = check_tome_schedule(r, model.num_patches, len(model.blocks))
    model.__class__ = ToMeViT
    model.tome_schedule = schedule
    return model  # type: ignore[return-value]


def remove_tome(model: ToMeViT) -> TokenViT:
    """Undo `apply_tome`: the plain TokenViT again."""
    model.__class__ = TokenViT
    model.__dict__.pop("tome_schedule", None)
    return model


def _lowered(
    nominal: Sequence[int],
    num_patches: int,
) -> list[int]:
    """`nominal` with each block's r lowered to the (t - 1) // 2 its t tokens allow (as ToMe does)."""
    schedule, t = [], num_patches + 1
    for r in nominal:
        schedule.append(min(r, (t - 1) // 2))
        t -= schedule[-1]
    return schedule


def tome_schedules(
    num_patches: int,
    depth: int,
) -> list[list[int]]:
    """The schedules `tome_schedule_for` searches, from no merging to the most merging possible.

    Entry (r, k) merges r + 1 tokens in the blocks before k and r in the rest (ToMe's constant r,
    refined one block at a time), each block's r lowered to what its tokens allow (so large r
    merge as much as possible early and less later, like ToMe's decreasing schedule); in the order
    r = 0, 1, ... (until every block merges all it can), k = 0, ..., depth - 1, repeats dropped.
    Along the list no block ever sees more tokens than before.
    """
    found: list[list[int]] = []
    for r in range(num_patches // 2 + 1):
        for k in range(depth):
            schedule = _lowered([r + 1] * k + [r] * (depth - k), num_patches)
            if not found or schedule != found[-1]:
                found.append(schedule)
    return found


def tome_schedule_for(
    base: TokenViT,
    target_gmacs: float,
    example: torch.Tensor,
) -> list[int]:
    """The schedule of `tome_schedules` whose GMACs come closest to `target_gmacs` (|ratio - 1|).

    From r = 1 in every block on, every entry merges more tokens than the last and costs less, so
    that part is bisected (a handful of `gmacs` calls). Each entry before it starts merging in
    one more block, which adds the matching's cost and may outweigh its saving: those entries are
    all measured only when the target lies above the bisected part's second entry. (Below it they
    are skipped: each sees at least as many tokens in every block as the bisected part's first
    entry, and costs less than it by at most the matching of the blocks it does not merge in.)

    Args:
        base: the TokenViT to match (not changed; measured on a copy).
        target_gmacs: the GMACs to match, e.g. a pruned model's `measure.gmacs`.
        example: `[1, channels, height, width]` input on the model's device, as for `gmacs`.
    Returns:
        r per block, for `apply_tome`.
    """
    if not target_gmacs > 0:
        raise MaskpruneError(f"ToMe target GMACs {target_gmacs} must be > 0; pass a model's measured GMACs")
    depth = len(base.blocks)
    schedules = tome_schedules(base.num_patches, depth)
    model = apply_tome(copy.deepcopy(base), 0)
    costs: dict[int, float] = {}

    def cost(n: int) -> float:
        if n not in costs:
            model.tome_schedule = schedules[n]
            costs[n] = gmacs(model, example)
        return costs[n]

    start = schedules.index(_lowered([1] * depth, base.num_patches))
    lo, hi = start, len(schedules) - 1  # the last entry of [start, end] at or above the target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) >= target_gmacs else (lo, mid - 1)
    candidates = {lo, min(lo + 1, len(schedules) - 1)}
    if lo == start:
        candidates.update(range(start))
    best = min(sorted(candidates), key=lambda n: abs(cost(n) / target_gmacs - 1))
    return list(schedules[best])
