"""Augmentation: per-image crops in the loader (timm's transforms, seeded per sample), shifts and flips on the device.

The sharded storage decodes each image in a loader worker and crops it there to uint8
`[c, size, size]` with timm's own transforms (`create_transform(..., use_prefetcher=True)`, which
stop before normalisation): for evaluation, resize the short side to `size / crop_pct` and centre-crop
(bicubic, as DeiT); for training, timm's random-resized crop, its draws seeded by (seed, epoch, sample
index) so they do not depend on the worker, the batch or the number of processes. Shifts and flips
are drawn per global batch and applied to whole batches on the device (`shift_and_flip`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CROP_PADDING = 2
INTERPOLATION = "bicubic"

Crop = Callable[[Image.Image], torch.Tensor]


def eval_crop(size: int, crop_pct: float) -> Crop:
    """PIL image -> uint8 `[c, size, size]`: resize the short side to `size / crop_pct`, centre-crop."""
    from timm.data import create_transform

    return create_transform(
        size, is_training=False, crop_pct=crop_pct, interpolation=INTERPOLATION, use_prefetcher=True
    )


def random_resized_crop(size: int, scale: list[float]) -> Crop:
    """PIL image -> uint8 `[c, size, size]`: timm's random-resized crop (aspect 3/4..4/3), no flip or colour."""
    from timm.data import create_transform

    return create_transform(
        size,
        is_training=True,
        scale=tuple(scale),
        hflip=0.0,
        color_jitter=None,
        interpolation=INTERPOLATION,
        use_prefetcher=True,
    )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's draws in one epoch: the same in any worker, batch or process."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def seeded_crop(crop: Crop, image: Image.Image, seed: int) -> torch.Tensor:
    """`crop(image)` with Python's `random` (which timm's transforms draw from) seeded, then restored."""
    state = random.getstate()
    random.seed(seed)
    try:
        return crop(image)
    finally:
        random.setstate(state)


def shift_and_flip(
    images: torch.Tensor,
    shifts: torch.Tensor,
    flips: torch.Tensor,
    pad: int = CROP_PADDING,
) -> torch.Tensor:
    """Translate each image by its (dy, dx) with zero fill, then mirror where flagged.

    Shifts must lie within +-`pad` (a constant, so no value is read back from the device); `pad` 0
    only flips.

    Args:
        images: uint8 or float `[b, c, h, w]`.
        shifts: int `[b, 2]`, (dy, dx) per image.
        flips: bool `[b]`.
    """
    b, _, h, w = images.shape
    if pad:
        padded = F.pad(images, (pad, pad, pad, pad))
        rows = torch.arange(h, device=images.device) + pad - shifts[:, 0:1].to(images.device)
        cols = torch.arange(w, device=images.device) + pad - shifts[:, 1:2].to(images.device)
        batch = torch.arange(b, device=images.device)[:, None, None]
        # NOTE: advanced indexing around a slice moves the indexed dims first: [b, h, w, c]
        images = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flips = flips.to(images.device)[:, None, None, None]
    return torch.where(flips, images.flip(-1), images)
