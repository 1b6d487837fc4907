"""Prepared data in memory: uint8 tensors, seeded batches, augmentation and normalisation on device.

Batches are drawn for the *global* batch (all ranks) from a generator seeded by (seed, epoch) and
then sliced per rank, so one process with batch B and N processes with batch B/N see exactly the
same images with the same augmentations.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from maskprune.data.splits import SPLITS, subset_indices
from maskprune.errors import MaskpruneError

CROP_PADDING = 2


@dataclass
class Split:
    images: torch.Tensor  # uint8 [n, channels, height, width]
    labels: torch.Tensor  # int64 [n]

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        pin = device.type == "cuda"
        images = self.images.pin_memory() if pin else self.images
        labels = self.labels.pin_memory() if pin else self.labels
        return Split(images.to(device, non_blocking=pin), labels.to(device, non_blocking=pin))

    def subset(self, limit: int, seed: int) -> Split:
        """A seeded subset of `limit` images (0 keeps all)."""
        if not limit:
            return self
        keep = torch.from_numpy(subset_indices(len(self), limit, seed)).to(self.labels.device)
        return Split(self.images[keep.to(self.images.device)], self.labels[keep])


@dataclass
class PreparedData:
    root: Path
    meta: dict
    splits: dict[str, Split]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def in_chans(self) -> int:
        return int(self.meta["image_shape"][0])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_shape"][1])

    def limit_train(self, limit: int, seed: int) -> PreparedData:
        """The same data with a seeded subset of `limit` training images (0 keeps all)."""
        if not limit:
            return self
        return replace(self, splits={**self.splits, "train": self.splits["train"].subset(limit, seed)})


def load_prepared(root: str | Path, splits: tuple[str, ...] = SPLITS) -> PreparedData:
    """Load `data/prepared/<name>/`; a missing or partial folder names the stage to run."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise MaskpruneError(f"prepared data not found at {root}: run `dvc repro prepare` first")
    meta = json.loads(meta_path.read_text())
    loaded = {}
    for split in splits:
        try:
            images = np.load(root / f"{split}_images.npy", allow_pickle=False)
            labels = np.load(root / f"{split}_labels.npy", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise MaskpruneError(f"{root}: cannot load split {split!r} ({err}); rerun `dvc repro -f prepare`") from None
        loaded[split] = Split(torch.from_numpy(images), torch.from_numpy(labels))
    return PreparedData(root=root, meta=meta, splits=loaded)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def train_batches(
    num_items: int,
    global_batch: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (indices, shifts `[b, 2]`, flips `[b]`) of this rank's share of each global batch.

    The epoch's order and augmentation draws are made at once (seeded by `seed` and `epoch`) and
    moved to `device` once, so a step costs no host-to-device copy. The last incomplete global
    batch is dropped, so every step has the same size on every rank.
    """
    if global_batch % world_size:
        raise MaskpruneError(f"batch_size {global_batch} is not divisible by {world_size} processes")
    gen = epoch_generator(seed, epoch)
    steps = num_items // global_batch
    order = torch.randperm(num_items, generator=gen)[: steps * global_batch].view(steps, global_batch)
    shifts = torch.randint(-CROP_PADDING, CROP_PADDING + 1, (steps, global_batch, 2), generator=gen)
    flips = torch.rand(steps, global_batch, generator=gen) < 0.5
    per_rank = global_batch // world_size
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    order, shifts, flips = (t[:, mine].to(device) for t in (order, shifts, flips))
    for step in range(steps):
        yield order[step], shifts[step], flips[step]


def steps_per_epoch(num_items: int, global_batch: int) -> int:
    return num_items // global_batch


def shift_and_flip(
    images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad: int = CROP_PADDING
) -> torch.Tensor:
    """Translate each image `[b, c, h, w]` by its (dy, dx) with zero fill, then mirror where flagged.

    Shifts must lie within +-`pad` (a constant, so no value is read back from the device).
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


def resize_note(image_shape: list[int], size: int) -> str | None:
    """How images of `image_shape` `[c, h, w]` reach a model of input `size`, or None if unchanged.

    The one resize in the pipeline is `Normalizer`'s; stages print this note and store it in
    each model's meta.json so that it is never silent.
    """
    height, width = image_shape[-2:]
    if height == size and width == size:
        return None
    return f"{height}x{width} images are resized to {size}x{size} (bilinear) for this model"


class Normalizer:
    """uint8 `[b, c, h, w]` -> float `[b, c, size, size]`, scaled to 0..1 and standardised."""

    def __init__(self, mean: list[float], std: list[float], size: int, device: torch.device):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.size = size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


def eval_batches(num_items: int, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
    """Index batches over this rank's strided share of a split, in order."""
    mine = torch.arange(rank, num_items, world_size)
    yield from mine.split(batch_size)
