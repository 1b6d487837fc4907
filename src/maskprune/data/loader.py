"""Batches: the seeded order of an epoch, evaluation order, decoding loader processes, normalisation.

Training batches are drawn for the *global* batch (all ranks) from a generator seeded by (seed,
epoch) and then sliced per rank, so one process with batch B and N processes with batch B/N see
exactly the same images with the same augmentations. The sharded storage's batches are decoded by
`decoded_batches`, in loader processes, in that order.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from maskprune.data.augment import CROP_PADDING, eval_crop, random_resized_crop, sample_seed, seeded_crop
from maskprune.data.sources import decode
from maskprune.errors import MaskpruneError

if TYPE_CHECKING:
    from maskprune.data.storage import ShardedSplit

# a training batch's random crops: (seed, epoch, the place in the epoch of its first image); None = evaluation crop
Draws = tuple[int, int, int] | None


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
    repeats: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (indices, shifts `[b, 2]`, flips `[b]`) of this rank's share of each global batch.

    The epoch's order and augmentation draws are made at once (seeded by `seed` and `epoch`) and
    moved to `device` once, so a step costs no host-to-device copy. The last incomplete global
    batch is dropped, so every step has the same size on every rank. With `repeats` > 1 the order
    is timm's repeated-augmentation sampler's (DeiT's): each image `repeats` times in a row, as many
    places as images (rounded down to 256), drawn for the global batch like any other order.
    """
    if global_batch % world_size:
        raise MaskpruneError(f"batch_size {global_batch} is not divisible by {world_size} processes")
    gen = epoch_generator(seed, epoch)
    if repeats > 1:
        from timm.data.distributed_sampler import RepeatAugSampler

        sampler = RepeatAugSampler(range(num_items), num_replicas=1, rank=0, num_repeats=repeats)
        sampler.set_epoch(seed * 100_003 + epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64)
    else:
        order = torch.randperm(num_items, generator=gen)
    steps = len(order) // global_batch
    order = order[: steps * global_batch].view(steps, global_batch)
    shifts = torch.randint(-CROP_PADDING, CROP_PADDING + 1, (steps, global_batch, 2), generator=gen)
    flips = torch.rand(steps, global_batch, generator=gen) < 0.5
    per_rank = global_batch // world_size
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    order, shifts, flips = (t[:, mine].to(device) for t in (order, shifts, flips))
    for step in range(steps):
        yield order[step], shifts[step], flips[step]


def steps_per_epoch(num_items: int, global_batch: int, repeats: int = 1) -> int:
    """The steps of `train_batches` (an epoch of repeated augmentation has its images rounded down to 256)."""
    places = num_items if repeats == 1 or num_items < 256 else num_items // 256 * 256
    return places // global_batch


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


class DecodedSamples(torch.utils.data.Dataset):
    """A sharded split's samples by key (position, draws): decoded, cropped to uint8 `[c, size, size]`.

    With draws (seed, epoch, place) the crop is the training one, seeded by them: an image met twice
    in an epoch (repeated augmentation) is cropped anew each time.
    """

    def __init__(self, split: ShardedSplit) -> None:
        self.split = split
        self.eval_crop = eval_crop(split.view.size, split.view.eval_crop_pct)
        self.train_crop = random_resized_crop(split.view.size, list(split.view.crop_scale), split.view.rand_augment)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, Draws]) -> tuple[torch.Tensor, int]:
        position, draws = key
        row_number = int(self.split.positions[position])
        row = self.split.index[row_number]
        try:
            image = decode(self.split.reader.read(row), self.split.view.channels)
        except Exception as err:  # noqa: BLE001 - re-raised with the sample it concerns
            raise MaskpruneError(
                f"{self.split.reader.folder}: sample {row_number} of {self.split.reader.split} cannot be decoded "
                f"({err}); rerun `dvc repro -f prepare`"
            ) from None
        if draws is None:
            return self._eval_crop(image), int(row["label"])
        return seeded_crop(self.train_crop, image, sample_seed(*draws)), int(row["label"])

    def _eval_crop(self, image: Image.Image) -> torch.Tensor:
        view = self.split.view
        if view.eval_crop_pct == 1.0 and image.size == (view.size, view.size):  # NOTE: timm's crop is the identity
            pixels = np.array(image)
            return torch.from_numpy(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1).copy())
        return self.eval_crop(image)


class BatchKeys:
    """The loader's batch sampler: each batch's keys made when the loader asks (an epoch's keys are never all held)."""

    def __init__(self, batches: list[tuple[torch.Tensor, Draws]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, Draws]]]:
        for idx, draws in self.batches:
            if draws is None:
                yield [(position, None) for position in idx.tolist()]
            else:
                seed, epoch, first = draws
                yield [(position, (seed, epoch, first + j)) for j, position in enumerate(idx.tolist())]


def _stack(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*samples, strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


@functools.cache
def _worker_context() -> multiprocessing.context.BaseContext:
    """Loader processes forked from a clean server process that has imported the loader once.

    NOTE: forking the training process itself copies whatever threads and locks it holds (a Prefect
    or MLflow client's, say), and such children can die on exit; the fork server has none.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "timm.data", "torchvision.transforms"])  # what a worker unpickles
    return context


def decoded_batches(
    split: ShardedSplit,
    batches: list[tuple[torch.Tensor, Draws]],
    workers: int,
    device: torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) of each batch of positions, in order, decoded by `workers` processes.

    Args:
        split: the sharded split the positions index.
        batches: per batch, its positions `[b]` and its draws (None = evaluation crop).
        workers: loader processes (0 = decode in this process).
        device: where the batches go (pinned first for CUDA); None = stay on the CPU.
    """
    pin = device is not None and device.type == "cuda"
    workers = min(workers, len(batches))
    loader = torch.utils.data.DataLoader(
        DecodedSamples(split),
        batch_sampler=BatchKeys(batches),
        num_workers=workers,
        collate_fn=_stack,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
        multiprocessing_context=_worker_context() if workers else None,
    )
    for images, labels in loader:
        if device is not None:
            images, labels = images.to(device, non_blocking=pin), labels.to(device, non_blocking=pin)
        yield images, labels
