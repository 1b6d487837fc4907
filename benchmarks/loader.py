"""The sharded data path: decoding per core, and training fed by the loader against training fed from memory.

1. decode: synthetic 500x375 JPEGs of about 110 KB (ImageNet's typical size), written to shards, decoded and
   random-resized-cropped to 224 by the loader's own per-sample code in this process: images per
   second on one core (what one loader worker gives). The A/A control is the same pass again. The
   prepare of those images (every core) is timed too: images per second per core.
2. feed: the student of the profile trained for one epoch of steps on batches the loader streams
   from shards (28x28 grey PNGs, the cpu profile's data, shift-and-flip augmentation; 2, 1 and 0
   loader processes, 0 decoding in the training process), against the very same batches held in
   memory. Rounds run memory, loader, memory, so each loader timing is bracketed; the ratio is the
   loader's img/s over the mean of the two memory timings (median over rounds), the A/A the second
   memory timing over the first. The loader's data-wait fraction says how much of its step time
   went to waiting for batches.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.common import BenchSetup
from benchmarks.jobs import cores
from maskprune.aa_control import aa_noisy
from maskprune.data.loader import Normalizer
from maskprune.data.storage import PreparedData, load_prepared

DECODE_IMAGES = 400
DECODE_SIZE = (500, 375)
FEED_IMAGES = 3072
FEED_WORKERS = (2, 1, 0)  # the target is the first's; 0 decodes in the training process
ROUNDS = 3


def _jpeg_tree(root: Path, count: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("train" if i % 4 else "test") / f"c{i // 4 % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        # NOTE: noise upsampled 3x: about 110 KB at quality 90, ImageNet's mean JPEG size
        small = rng.integers(0, 256, (size[1] // 3, size[0] // 3, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BICUBIC).save(folder / f"{i}.jpg", quality=90)


def _prepare(data: dict[str, Any], out: Path, setup: BenchSetup) -> Path:
    from maskprune.config import DataSection
    from stages.prepare import prepare_dataset

    cfg = DataSection.model_validate({**setup.params.data.model_dump(), **data, "name": "bench", "storage": "shards"})
    prepare_dataset(cfg, 0, out, log=lambda _: None)
    return out / "bench"


def decode_rate(setup: BenchSetup, work: Path) -> dict[str, Any]:
    _jpeg_tree(work / "jpeg", DECODE_IMAGES, DECODE_SIZE)
    data = {"format": "imagefolder", "root": str(work / "jpeg"), "image_size": 224, "train_crop": "random_resized"}
    started = time.perf_counter()
    split = load_prepared(_prepare(data, work / "jpeg-prepared", setup)).splits["train"]
    prepare_s = time.perf_counter() - started
    samples = split.loader.samples
    for position in range(min(20, len(split))):  # warm-up: caches, the allocator
        samples[("train", position, (0, 0, position))]
    rates = []
    for _ in range(2):  # the second pass is the A/A control
        started = time.perf_counter()
        for position in range(len(split)):
            samples[("train", position, (0, 0, position))]
        rates.append(len(split) / (time.perf_counter() - started))
    return {
        "images": len(split),
        "source_size": list(DECODE_SIZE),
        "crop": 224,
        "img_per_s_per_core": rates[0],
        "aa_ratio": rates[1] / rates[0],
        "prepare_img_per_s_per_core": DECODE_IMAGES / prepare_s / cores(),
    }


def _epoch(model: torch.nn.Module, batches: Any, normalize: Normalizer, steps: int) -> tuple[float, float]:
    """img/s of `steps` training steps over `batches`, and the fraction spent waiting for them."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    iterator, waited, count = iter(batches), 0.0, 0
    started = time.perf_counter()
    for _ in range(steps):
        asked = time.perf_counter()
        images, labels = next(iterator)
        waited += time.perf_counter() - asked
        loss = F.cross_entropy(model(normalize(images)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        count += len(labels)
    seconds = time.perf_counter() - started
    return count / seconds, waited / seconds


def feed_ratio(setup: BenchSetup, work: Path) -> dict[str, Any]:
    from maskprune.config import DataSection
    from maskprune.data.sources import RawSplits
    from stages.prepare import prepare_shards

    spec = setup.params.models.student
    rng = np.random.default_rng(0)
    side = spec.img_size
    images = rng.integers(0, 256, (FEED_IMAGES, 1, side, side), dtype=np.uint8)
    labels = np.arange(FEED_IMAGES) % setup.num_classes
    raw = RawSplits(images, labels, images[:256], labels[:256], tuple(map(str, range(setup.num_classes))))
    cfg = DataSection.model_validate(
        {
            **setup.params.data.model_dump(),
            "name": "feed",
            "storage": "shards",
            "val_fraction": 0.01,
            "train_limit": 0,
            "test_limit": 0,
            "image_size": 0,
        }
    )
    prepare_shards(cfg, 0, work, raw, log=lambda _: None, workers=2)
    return {
        f"workers_{workers}": feed_with(setup, load_prepared(work / "feed", workers=workers), workers)
        for workers in FEED_WORKERS
    }


def feed_with(setup: BenchSetup, prepared: PreparedData, workers: int) -> dict[str, Any]:
    """Rounds of memory, loader (`workers` processes), memory; the medians."""
    side = setup.params.models.student.img_size
    split = prepared.splits["train"]
    device = setup.runtime.device
    normalize = Normalizer(prepared.meta["mean"], prepared.meta["std"], side, device)
    model = setup.model(setup.params.models.student).train()
    held = list(split.train_batches(setup.batch, 0, 0, device, True))
    steps = len(held)
    _epoch(model, held, normalize, min(steps, setup.warmup))
    rounds = []
    for _ in range(ROUNDS):
        first, _ = _epoch(model, held, normalize, steps)
        streamed, wait = _epoch(model, split.train_batches(setup.batch, 0, 0, device, True), normalize, steps)
        second, _ = _epoch(model, held, normalize, steps)
        rounds.append(
            {
                "memory": (first + second) / 2,
                "loader": streamed,
                "ratio": 2 * streamed / (first + second),
                "aa": second / first,
                "wait": wait,
            }
        )
    aa = statistics.median(r["aa"] for r in rounds)
    return {
        "images": steps * setup.batch,
        "batch": setup.batch,
        "workers": workers,
        "memory_img_per_s": statistics.median(r["memory"] for r in rounds),
        "loader_img_per_s": statistics.median(r["loader"] for r in rounds),
        "loader_over_memory": statistics.median(r["ratio"] for r in rounds),
        "data_wait": statistics.median(r["wait"] for r in rounds),
        "aa_ratio": aa,
        "noisy": aa_noisy(aa),
        "rounds": rounds,
    }


def run(setup: BenchSetup) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work:
        return {"decode": decode_rate(setup, Path(work)), "feed": feed_ratio(setup, Path(work))}
