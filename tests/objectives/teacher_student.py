"""A tiny student/teacher pair for the objective tests: Fashion-MNIST's grid, seeded batches, and a
hook that records what a model's first block receives."""

from __future__ import annotations

import torch

from maskprune.models.vit import TokenViT

GRID = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10)


def tiny(dim: int = 32, heads: int = 2, depth: int = 2) -> TokenViT:
    """A TokenViT on `GRID` (random weights)."""
    return TokenViT(**GRID, embed_dim=dim, depth=depth, num_heads=heads)


class Seen:
    """Records what a TokenViT's first block receives and how it was called."""

    def __init__(self, model: TokenViT) -> None:
        self.tokens: list[int] = []
        self.inference: list[bool] = []
        self.training: list[bool] = []
        model.blocks[0].register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.tokens.append(args[0].shape[1])
        self.inference.append(torch.is_inference_mode_enabled())
        self.training.append(module.training)


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded images `[n, 1, 28, 28]` and labels `[n]`."""
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)
