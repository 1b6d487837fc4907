"""Token selection: which patch tokens a model keeps.

Indices refer to patch tokens only (0 .. num_patches-1); prefix tokens ([CLS]) are always kept
by the token-aware ViT and never appear here. Every selection returns `[batch, kept]` indices in
ascending order, so kept tokens stay in their spatial order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch

Criterion = Literal["student_attn", "random", "teacher_attn", "bottom_k"]
CRITERIA: tuple[str, ...] = get_args(Criterion)


def check_keep_ratio(keep_ratio: float) -> float:
    """`keep_ratio` itself if it lies in (0, 1]; a ValueError naming it otherwise."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep ratio must lie in (0, 1], got {keep_ratio}")
    return keep_ratio


def num_kept(num_patches: int, keep_ratio: float) -> int:
    """Patches kept at `keep_ratio`: floor(n * ratio) as timm's PatchDropout, at least one."""
    return max(1, min(num_patches, int(num_patches * check_keep_ratio(keep_ratio) + 1e-6)))


def random_keep_idx(
    batch: int,
    num_patches: int,
    keep: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """`[batch, keep]` random patch indices per image (argsort of uniform noise)."""
    noise = torch.rand(batch, num_patches, generator=generator, device=device)
    return noise.argsort(dim=1)[:, :keep].sort(dim=1).values


def score_keep_idx(scores: torch.Tensor, keep: int, largest: bool = True) -> torch.Tensor:
    """`[batch, keep]` indices of the `keep` highest (or lowest) of `scores` `[batch, patches]`."""
    return scores.topk(keep, dim=1, largest=largest, sorted=False).indices.sort(dim=1).values


class HybridRatios:
    """A keep ratio per batch, drawn from a finite set with given probabilities.

    Masked fine-tuning draws one ratio per batch (e.g. {1.0, 0.75, 0.5, 0.25}, uniform), so
    the model sees every amount of masking during training.
    """

    def __init__(self, ratios: Sequence[float], probs: Sequence[float]) -> None:
        if not ratios:
            raise ValueError("the hybrid set of keep ratios is empty")
        if len(ratios) != len(probs):
            raise ValueError(f"{len(ratios)} keep ratios but {len(probs)} probabilities")
        if any(not 0.0 < r <= 1.0 for r in ratios):
            raise ValueError(f"keep ratios must lie in (0, 1], got {list(ratios)}")
        if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(f"probabilities must be >= 0 and sum to 1, got {list(probs)}")
        self.ratios = [float(r) for r in ratios]
        self.probs = torch.tensor([float(p) for p in probs], dtype=torch.float64)

    def sample(self, generator: torch.Generator | None = None) -> float:
        """One ratio; uses the global CPU generator unless one is given (seeded by the engine)."""
        if len(self.ratios) == 1:
            return self.ratios[0]
        return self.ratios[int(torch.multinomial(self.probs, 1, generator=generator))]

    @property
    def mean(self) -> float:
        return float(sum(r * p for r, p in zip(self.ratios, self.probs.tolist(), strict=True)))
