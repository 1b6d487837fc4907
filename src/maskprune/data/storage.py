"""Prepared data behind one interface, in memory or in shards: what every stage reads.

A prepared folder (`data/prepared/<name>/`, written by the prepare stage) is in one of two storages,
named by `meta.json`'s `storage`:

- memory: `{split}_images.npy` (uint8 `[n, c, h, w]`) and `{split}_labels.npy`, loaded whole (and
  moved whole to the GPU): small data, the fastest path.
- shards: tar shards of the encoded images and an index per split (`maskprune.data.shards`),
  decoded and cropped by loader processes batch by batch: data of any size.

Stages see a `Split` either way: its labels, seeded subsets, evaluation batches in order, and the
training batches of an epoch; a batch is uint8 `[b, c, size, size]` on the device, normalised and
resized to the model by `Normalizer`. Neither the stages nor the trainer branch on the storage.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from maskprune.data.augment import CROP_PADDING, shift_and_flip
from maskprune.data.loader import Crop, ShardLoader, eval_batches, train_batches
from maskprune.data.shards import ShardReader, index_name
from maskprune.data.splits import SPLITS, subset_indices
from maskprune.errors import MaskpruneError

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images [b, c, h, w], int64 labels [b]


class Split(ABC):
    """One split of a prepared dataset: `len(split)` images with `labels` (int64 `[n]`)."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def subset(self, limit: int, seed: int) -> Split:
        """A seeded subset of `limit` images (0 keeps all)."""

    @abstractmethod
    def to(self, device: torch.device) -> Split:
        """The split ready to serve batches on `device` (memory: moved there whole)."""

    @abstractmethod
    def images_at(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 `[len(idx), c, h, w]` of the images at positions `idx`, as evaluation sees them."""

    @abstractmethod
    def batches(
        self,
        batch_size: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        crop_pct: float | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(positions, images, labels) over this rank's strided share of the split, in order, on `device`.

        The sharded storage centre-crops with `crop_pct` (None: the data's `eval_crop_pct`).
        """

    @abstractmethod
    def train_batches(
        self,
        global_batch: int,
        seed: int,
        epoch: int,
        device: torch.device,
        augment: bool,
        rank: int = 0,
        world_size: int = 1,
        repeats: int = 1,
    ) -> Iterator[Batch]:
        """This rank's share of each global batch of one epoch, augmented if `augment` (`repeats`: see train_batches).

        The order and every augmentation draw depend only on (seed, epoch) and each image's position,
        so one process with batch B and N processes with B/N see the same images, augmented alike.
        """


@dataclass
class MemorySplit(Split):
    images: torch.Tensor  # uint8 [n, channels, height, width]
    labels: torch.Tensor  # int64 [n]

    def to(self, device: torch.device) -> MemorySplit:
        pin = device.type == "cuda"
        images = self.images.pin_memory() if pin else self.images
        labels = self.labels.pin_memory() if pin else self.labels
        return MemorySplit(images.to(device, non_blocking=pin), labels.to(device, non_blocking=pin))

    def subset(self, limit: int, seed: int) -> MemorySplit:
        if not limit:
            return self
        keep = torch.from_numpy(subset_indices(len(self), limit, seed)).to(self.labels.device)
        return MemorySplit(self.images[keep.to(self.images.device)], self.labels[keep])

    def images_at(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx.to(self.images.device)]

    def batches(self, batch_size, device, rank=0, world_size=1, crop_pct=None):  # noqa: ANN001, ANN201, ARG002 - as Split
        for idx in eval_batches(len(self), batch_size, rank, world_size):
            images = self.images[idx.to(self.images.device)].to(device)
            yield idx, images, self.labels[idx.to(self.labels.device)].to(device)

    def train_batches(self, global_batch, seed, epoch, device, augment, rank=0, world_size=1, repeats=1):  # noqa: ANN001, ANN201
        for idx, shifts, flips in train_batches(
            len(self), global_batch, seed, epoch, rank, world_size, device, repeats
        ):
            images = self.images[idx]
            if augment:
                images = shift_and_flip(images, shifts, flips)
            yield images, self.labels[idx]


@dataclass(frozen=True)
class View:
    """How the sharded storage crops images: the side, the training crop and evaluation's crop_pct."""

    channels: int
    size: int
    train_crop: str  # "shift" (the evaluation crop, shifted on the device) or "random_resized"
    crop_scale: tuple[float, float]
    rand_augment: str  # timm's RandAugment config, '' = none
    eval_crop_pct: float


@dataclass
class ShardedSplit(Split):
    reader: ShardReader  # the split's shards and its index (shards.INDEX_DTYPE rows)
    positions: np.ndarray = field(repr=False)  # int64 [n]: the rows of the index this split serves
    loader: ShardLoader  # shared by the prepared folder's splits
    device: torch.device = torch.device("cpu")  # where `labels` live; batches go where they are asked to

    def __post_init__(self) -> None:
        self.labels = torch.from_numpy(self.reader.index["label"][self.positions].astype(np.int64)).to(self.device)

    def to(self, device: torch.device) -> ShardedSplit:
        return replace(self, device=device)

    def subset(self, limit: int, seed: int) -> ShardedSplit:
        if not limit:
            return self
        return replace(self, positions=self.positions[subset_indices(len(self), limit, seed)])

    def _decoded(
        self,
        batches: list[tuple[torch.Tensor, Crop]],
        device: torch.device | None,
        workers: int | None = None,
    ) -> Iterator[Batch]:
        """(images, labels) of each batch of positions (labels from the index, here), in order."""
        rows = [(self.reader.split, self.positions[idx.cpu().numpy()], crop) for idx, crop in batches]
        images = self.loader.batches(rows, device, workers)
        for (_, batch_rows, _), batch_images in zip(rows, images, strict=True):
            labels = torch.from_numpy(self.reader.index["label"][batch_rows].astype(np.int64))
            yield batch_images, labels if device is None else labels.to(device)

    def images_at(self, idx: torch.Tensor) -> torch.Tensor:
        (images,) = [images for images, _ in self._decoded([(idx, self.loader.view.eval_crop_pct)], None, workers=0)]
        return images

    def batches(self, batch_size, device, rank=0, world_size=1, crop_pct=None):  # noqa: ANN001, ANN201 - as Split
        order = list(eval_batches(len(self), batch_size, rank, world_size))
        crop = float(self.loader.view.eval_crop_pct if crop_pct is None else crop_pct)
        loaded = self._decoded([(idx, crop) for idx in order], device)
        for idx, (images, labels) in zip(order, loaded, strict=True):
            yield idx, images, labels

    def train_batches(self, global_batch, seed, epoch, device, augment, rank=0, world_size=1, repeats=1):  # noqa: ANN001, ANN201
        steps = list(train_batches(len(self), global_batch, seed, epoch, rank, world_size, repeats=repeats))
        view = self.loader.view
        cropped = augment and view.train_crop == "random_resized"
        first = rank * (global_batch // world_size)  # the place in the epoch of this rank's first image of a step
        keys = [
            (idx, (seed, epoch, step * global_batch + first) if cropped else float(view.eval_crop_pct))
            for step, (idx, _, _) in enumerate(steps)
        ]
        loaded = self._decoded(keys, device)
        pad = CROP_PADDING if view.train_crop == "shift" else 0
        for (_, shifts, flips), (images, labels) in zip(steps, loaded, strict=True):
            if augment:
                images = shift_and_flip(images, shifts, flips, pad)
            yield images, labels


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


def _memory_split(root: Path, split: str) -> MemorySplit:
    images = np.load(root / f"{split}_images.npy", allow_pickle=False)
    labels = np.load(root / f"{split}_labels.npy", allow_pickle=False)
    return MemorySplit(torch.from_numpy(images), torch.from_numpy(labels))


def _view(meta: dict) -> View:
    return View(
        channels=int(meta["image_shape"][0]),
        size=int(meta["image_shape"][1]),
        train_crop=meta["view"]["train_crop"],
        crop_scale=tuple(meta["view"]["crop_scale"]),
        rand_augment=meta["view"]["rand_augment"],
        eval_crop_pct=float(meta["view"]["eval_crop_pct"]),
    )


def load_prepared(
    root: str | Path,
    splits: tuple[str, ...] = SPLITS,
    workers: int = 0,
) -> PreparedData:
    """Open `data/prepared/<name>/`; a missing or partial folder names the stage to run.

    Args:
        root: the prepared folder.
        splits: the splits to open.
        workers: sharded storage: loader processes that decode batches (0 = this process).
    """
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise MaskpruneError(f"prepared data not found at {root}: run `dvc repro prepare` first")
    meta = json.loads(meta_path.read_text())
    sharded = meta.get("storage") == "shards"
    loaded: dict[str, Split] = {}
    readers: dict[str, ShardReader] = {}
    for split in splits:
        try:
            if sharded:
                readers[split] = ShardReader(root, split, np.load(root / index_name(split), allow_pickle=False))
            else:
                loaded[split] = _memory_split(root, split)
        except (OSError, ValueError, KeyError) as err:
            raise MaskpruneError(f"{root}: cannot load split {split!r} ({err}); rerun `dvc repro -f prepare`") from None
    if sharded:
        try:
            loader = ShardLoader(readers, _view(meta), workers)
        except (KeyError, TypeError, ValueError) as err:
            raise MaskpruneError(f"{root}/meta.json: no valid view ({err}); rerun `dvc repro -f prepare`") from None
        loaded = {name: ShardedSplit(reader, np.arange(len(reader.index)), loader) for name, reader in readers.items()}
    return PreparedData(root=root, meta=meta, splits=loaded)
