"""Token selection: which patch tokens a model keeps.

Indices refer to patch tokens only (0 .. num_patches-1); prefix tokens ([CLS]) are always kept
by the token-aware ViT and never appear here.
"""

from __future__ import annotations

import torch


def num_kept(num_patches: int, keep_ratio: float) -> int:
    """Patches kept at `keep_ratio`: floor(n * ratio) as timm's PatchDropout, at least one."""
    return max(1, min(num_patches, int(num_patches * keep_ratio + 1e-6)))


def random_keep_idx(batch: int, num_patches: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    """`[batch, keep]` random patch indices per image (argsort of noise), in ascending order."""
    noise = torch.rand(batch, num_patches, generator=generator)
    return noise.argsort(dim=1)[:, :keep].sort(dim=1).values
