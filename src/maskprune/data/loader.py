"""Batches: the seeded order of an epoch, evaluation order, decoding loader processes, normalisation.

Training batches are drawn for the *global* batch (all ranks) from a generator seeded by (seed,
epoch) and then sliced per rank, so one process with batch B and N processes with batch B/N see
exactly the same images with the same augmentations. The sharded storage's batches are decoded by
`ShardLoader`, in loader processes kept for its life, in that order.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from maskprune.data.augment import CROP_PADDING, eval_crop, random_resized_crop, sample_seed, seeded_crop
from maskprune.data.sources import decode
from maskprune.errors import MaskpruneError

if TYPE_CHECKING:
    from maskprune.data.shards import ShardReader
    from maskprune.data.storage import View

# how a batch is cropped: the evaluation crop's crop_pct, or a training batch's random crops' draws
# (seed, epoch, the place in the epoch of its first image)
Crop = float | tuple[int, int, int]


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
    """uint8 `[b, c, h, w]` -> float `[b, c, size, size]`, scaled to 0..1 and standardised: how a model takes images.

    `crop_pct` is the centre crop the sharded storage's loader makes for this model's evaluation
    (None: the prepared data's `eval_crop_pct`); the memory storage does not crop.
    """

    def __init__(
        self,
        mean: list[float],
        std: list[float],
        size: int,
        device: torch.device,
        crop_pct: float | None = None,
    ) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.size = size
        self.crop_pct = crop_pct

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
    """A prepared folder's sharded samples by key (split, row, crop): decoded, cropped to uint8 `[c, size, size]`.

    A float crop is evaluation's crop_pct; with draws (seed, epoch, place) the crop is the training
    one, seeded by them: an image met twice in an epoch (repeated augmentation) is cropped anew each
    time. Labels stay in the training process (it holds the index), so a batch crosses from a
    loader process as one tensor.
    """

    def __init__(self, readers: dict[str, ShardReader], view: View) -> None:
        self.readers = readers
        self.view = view
        self.eval_crops: dict[float, Callable[[Image.Image], torch.Tensor]] = {}
        self.train_crop = random_resized_crop(view.size, list(view.crop_scale), view.rand_augment)

    def __len__(self) -> int:
        return sum(len(reader.index) for reader in self.readers.values())

    def __getitem__(self, key: tuple[str, int, Crop]) -> torch.Tensor:
        split, row_number, crop = key
        reader = self.readers[split]
        try:
            image = decode(reader.read(row_number), self.view.channels)
        except Exception as err:  # noqa: BLE001 - re-raised with the sample it concerns
            raise MaskpruneError(
                f"{reader.folder}: sample {row_number} of {split} cannot be decoded ({err}); "
                "rerun `dvc repro -f prepare`"
            ) from None
        if isinstance(crop, float):
            return self._eval_crop(image, crop)
        return seeded_crop(self.train_crop, image, sample_seed(*crop))

    def _eval_crop(self, image: Image.Image, crop_pct: float) -> torch.Tensor:
        if crop_pct == 1.0 and image.size == (self.view.size, self.view.size):  # NOTE: timm's crop is the identity
            pixels = np.array(image)
            return torch.from_numpy(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1).copy())
        if crop_pct not in self.eval_crops:
            self.eval_crops[crop_pct] = eval_crop(self.view.size, crop_pct)
        return self.eval_crops[crop_pct](image)


# per batch: its split, its rows of that split's index `[b]` and its crop
RowBatch = tuple[str, np.ndarray, Crop]


class BatchKeys:
    """The loader's batch sampler: each batch's keys made when the loader asks (an epoch's keys are never all held).

    `batches` is set anew for each pass of a persistent loader.
    """

    def __init__(self, batches: list[RowBatch]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[str, int, Crop]]]:
        for split, rows, crop in self.batches:
            if isinstance(crop, float):
                yield [(split, row, crop) for row in rows.tolist()]
            else:
                seed, epoch, first = crop
                yield [(split, row, (seed, epoch, first + j)) for j, row in enumerate(rows.tolist())]


@functools.cache
def _worker_context() -> multiprocessing.context.BaseContext:
    """Loader processes forked from a clean server process that has imported the loader once.

    NOTE: forking the training process itself copies whatever threads and locks it holds (a Prefect
    or MLflow client's, say), and such children can die on exit; the fork server has none.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "timm.data", "torchvision.transforms"])  # what a worker unpickles
    return context


class ShardLoader:
    """Decodes batches of a prepared folder's shards in `workers` processes kept for the loader's life.

    As timm's persistent workers: one set of processes serves every pass over every split (an epoch,
    an evaluation), instead of starting anew for each. A pass asked for while another is still
    being read (none in the stages) gets processes of its own.

    Args:
        readers: each split's shards.
        view: how images are cropped.
        workers: loader processes (0 = decode in this process).
    """

    def __init__(
        self,
        readers: dict[str, ShardReader],
        view: View,
        workers: int,
    ) -> None:
        self.samples = DecodedSamples(readers, view)
        self.view = view
        self.workers = workers
        self._persistent: torch.utils.data.DataLoader | None = None
        self._busy = False

    def batches(
        self,
        batches: list[RowBatch],
        device: torch.device | None = None,
        workers: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """uint8 images `[b, c, size, size]` of each batch, in order.

        Args:
            batches: per batch, its split, rows and crop.
            device: where the batches go (pinned first for CUDA); None = stay on the CPU.
            workers: processes for this pass (None = the loader's own).
        """
        workers = self.workers if workers is None else workers
        pin = device is not None and device.type == "cuda"
        shared = workers > 0 and workers == self.workers and not self._busy
        if shared:
            loader = self._persistent = self._persistent or self._loader(workers, pin, persistent=True)
            loader.batch_sampler.batches = batches
            self._busy = True
        else:
            loader = self._loader(workers, pin, persistent=False, batches=batches)
        try:
            for images in loader:
                yield images if device is None else images.to(device, non_blocking=pin)
        finally:
            if shared:
                self._busy = False

    def _loader(
        self,
        workers: int,
        pin: bool,
        persistent: bool,
        batches: list[RowBatch] | None = None,
    ) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.samples,
            batch_sampler=BatchKeys(batches or []),
            num_workers=workers,
            collate_fn=torch.utils.data.default_collate,  # NOTE: in a worker it stacks straight into shared memory
            pin_memory=pin,
            prefetch_factor=4 if workers else None,
            persistent_workers=persistent,
            multiprocessing_context=_worker_context() if workers else None,
        )
