"""A tiny token-aware ViT for the model tests: Fashion-MNIST's grid (28 px, 4 px patches), 6 blocks."""

from __future__ import annotations

import torch

from maskprune.models.vit import TokenViT

TINY = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=6, num_heads=4)


def tiny() -> TokenViT:
    """A seeded TokenViT of `TINY` in eval mode."""
    torch.manual_seed(0)
    return TokenViT(**TINY).eval()
