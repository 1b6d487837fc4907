"""The training engine (`maskprune.trainer.fit`) against a plain hand-written training loop.

Both train the profile's student on the same in-memory uint8 images (device-resident, as the
stages hold them) with the same recipe: AdamW, cross-entropy with label smoothing, gradient
clipping at 1.0, the runtime's autocast, and torch.compile's default mode when compiling. The
plain loop is what one would write by hand: random batch indices, normalise, forward, loss,
backward, clip, step with a default AdamW. The engine adds its schedule,
seeded batches, history and loss checks; its checkpoint write after each epoch is outside the
timed steps, as is the plain loop's set-up. Engine epochs and plain-loop blocks of the same number
of steps alternate, and the medians are compared.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import IN_CHANS, NUM_CLASSES, BenchSetup
from maskprune.config import TrainSection
from maskprune.data.loader import Normalizer
from maskprune.data.storage import MemorySplit, PreparedData
from maskprune.objectives.classification import ClassificationObjective
from maskprune.runtime import Runtime
from maskprune.trainer import fit

LABEL_SMOOTHING = 0.1
GRAD_CLIP = 1.0
LR = 1e-3


def synthetic_data(images: int, size: int) -> PreparedData:
    gen = torch.Generator().manual_seed(0)
    split = MemorySplit(
        torch.randint(0, 256, (images, IN_CHANS, size, size), dtype=torch.uint8, generator=gen),
        torch.randint(0, NUM_CLASSES, (images,), generator=gen),
    )
    meta = {
        "num_classes": NUM_CLASSES,
        "image_shape": [IN_CHANS, size, size],
        "mean": [0.29],
        "std": [0.35],
        "name": "synthetic",
    }
    return PreparedData(root=Path("."), meta=meta, splits={"train": split, "val": split})


def engine_img_per_s(model: torch.nn.Module, data: PreparedData, batch: int, runtime: Runtime) -> float:
    """Images per second of one engine epoch (steps only; a fresh state folder, so no resume)."""
    cfg = TrainSection(
        epochs=1,
        batch_size=batch,
        lr=LR,
        min_lr=LR / 100,
        weight_decay=0.05,
        warmup_epochs=0.0,
        label_smoothing=LABEL_SMOOTHING,
        grad_clip=GRAD_CLIP,
        augment=False,
        mixup=0.0,
        cutmix=0.0,
        random_erasing=0.0,
        repeated_aug=1,
    )
    with tempfile.TemporaryDirectory() as state:
        history = fit(
            model,
            data,
            cfg,
            ClassificationObjective(LABEL_SMOOTHING),
            runtime,
            seed=0,
            state_dir=Path(state),
            config_hash="bench",
            validate=False,
            log=lambda line: None,
        )
    return history[-1]["img_per_s"]


def plain_img_per_s(
    model: torch.nn.Module, data: PreparedData, batch: int, runtime: Runtime, compile_model: bool
) -> float:
    """Images per second of a hand-written loop over as many steps as one engine epoch."""
    device = runtime.device
    images, labels = data.splits["train"].images.to(device), data.splits["train"].labels.to(device)
    normalize = Normalizer(data.meta["mean"], data.meta["std"], data.image_size, device)
    net = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    steps = len(labels) // batch
    model.train()
    runtime.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (batch,), device=device)
        with runtime.autocast():
            loss = F.cross_entropy(net(normalize(images[idx])).float(), labels[idx], label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
    runtime.synchronize()
    return steps * batch / (time.perf_counter() - start)


def run(setup: BenchSetup, steps: int = 40, rounds: int = 0) -> dict[str, Any]:
    """Engine vs plain loop: `rounds` (default: from setup.repeats) alternations of `steps` steps each."""
    rounds = rounds or max(3, setup.repeats // 5)
    data = synthetic_data(steps * setup.batch, setup.params.models.student.img_size)
    runtime = setup.runtime
    engine_model, plain_model = setup.student().train(), setup.student().train()
    engine_img_per_s(engine_model, data, setup.batch, runtime)  # warm-up (and compile) of both
    plain_img_per_s(plain_model, data, setup.batch, runtime, setup.compile)
    engine, plain = [], []
    for _ in range(rounds):
        engine.append(engine_img_per_s(engine_model, data, setup.batch, runtime))
        plain.append(plain_img_per_s(plain_model, data, setup.batch, runtime, setup.compile))
    e, p = statistics.median(engine), statistics.median(plain)
    return {
        "steps_per_round": steps,
        "rounds": rounds,
        "batch": setup.batch,
        "engine_img_per_s": e,
        "plain_img_per_s": p,
        "engine_over_plain": e / p,
        "engine_rounds": engine,
        "plain_rounds": plain,
    }
