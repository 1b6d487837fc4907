"""Augmentation: per-image crops in the loader (timm's transforms, seeded per sample), shifts and flips on the device.

The sharded storage decodes each image in a loader worker and crops it there to uint8
`[c, size, size]` with timm's own transforms (`create_transform(..., use_prefetcher=True)`, which
stop before normalisation): for evaluation, resize the short side to `size / crop_pct` and centre-crop
(bicubic, as DeiT); for training, timm's random-resized crop and RandAugment, their draws seeded by
(seed, epoch, the sample's place in the epoch) so they do not depend on the worker, the batch or the
number of processes. Shifts and flips are drawn per global batch and applied to whole batches on the
device (`shift_and_flip`); random erasing and mixup/cutmix run on the normalised batch there
(`BatchAugment`, timm's RandomErasing and Mixup).
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


def random_resized_crop(size: int, scale: list[float], rand_augment: str = "") -> Crop:
    """PIL image -> uint8 `[c, size, size]`: timm's random-resized crop (aspect 3/4..4/3), then RandAugment if given.

    No flip (the device flips whole batches) and no colour jitter (DeiT's recipe turns it off with RandAugment).
    """
    from timm.data import create_transform

    return create_transform(
        size,
        is_training=True,
        scale=tuple(scale),
        hflip=0.0,
        color_jitter=None,
        auto_augment=rand_augment or None,
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


class BatchAugment:
    """timm's RandomErasing and Mixup/CutMix on a normalised batch on the device; labels become soft targets.

    Each batch's draws are seeded by (seed, epoch, step, rank). Mixup and CutMix pair the images of
    one process's batch (as timm and DeiT do), so with them on, N processes at batch B/N mix other
    pairs than one process at B. The targets carry no label smoothing: the objectives' cross-entropy
    applies it to soft targets as to labels, which equals timm's smoothed mixup targets.

    Args:
        mixup: mixup's Beta alpha (0 = off).
        cutmix: cutmix's Beta alpha (0 = off).
        erasing: probability of erasing a random rectangle of an image (0 = off).
        num_classes: the classes of the soft targets.
        device: where the batches are.
    """

    def __init__(
        self,
        mixup: float,
        cutmix: float,
        erasing: float,
        num_classes: int,
        device: torch.device,
    ) -> None:
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing

        self.mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.0, num_classes=num_classes)
        self.mix = self.mix if mixup or cutmix else None
        self.erase = RandomErasing(erasing, mode="pixel", device=str(device)) if erasing else None

    @property
    def active(self) -> bool:
        return self.mix is not None or self.erase is not None

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        draws: tuple[int, int, int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, targets) of normalised images `[b, c, h, w]` and labels `[b]`; draws: (seed, epoch, step, rank)."""
        seed = sample_seed(draws[0], draws[1], draws[2] * 100_003 + draws[3])
        state, numpy_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            if self.erase is not None:
                with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
                    torch.manual_seed(seed)
                    images = self.erase(images)
            if self.mix is not None:
                images, labels = self.mix(images, labels)
        finally:
            random.setstate(state)
            np.random.set_state(numpy_state)
        return images, labels
