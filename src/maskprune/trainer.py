"""The training engine shared by every stage.

AdamW with linear warm-up then cosine decay (per step), label smoothing, DeiT's batch augmentations
(random erasing, mixup/cutmix, repeated augmentation) when switched on, gradient clipping, bf16
autocast on CUDA, full seeding, a resumable checkpoint after every epoch, a clear stop on a
non-finite loss, and torchrun/DDP (rank 0 writes). What a stage optimises is an `Objective`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch.nn.parallel import DistributedDataParallel

from maskprune.checkpoint import load_train_state, save_train_state
from maskprune.config import TrainSection
from maskprune.data.augment import BatchAugment
from maskprune.data.loader import Normalizer, resize_note, steps_per_epoch
from maskprune.data.storage import PreparedData
from maskprune.errors import MaskpruneError
from maskprune.measure import top1
from maskprune.runtime import Runtime, all_reduce_sum

NONFINITE_CHECK_EVERY = 20


class Objective(Protocol):
    """The scalar loss of one batch (images normalised, on the device).

    An objective may also define `epoch_summary() -> dict[str, float]`: extra fields for the
    epoch's history record (e.g. its training FLOPs), called once at the end of every epoch; and
    `set_progress(epochs: float)`, called before every step with the epochs done so far (e.g.
    for a keep-rate schedule; a resumed run replays the same values).
    """

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up to 1, then cosine down to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass(frozen=True)
class BackboneLR:
    """Pre-trained weights learn slower than newly added modules (DynamicViT's recipe).

    Parameters whose names start with one of `new_modules` get the full learning rate; all others
    get `scale` times it, and none at all during the first `freeze_epochs`.
    """

    new_modules: tuple[str, ...]
    scale: float = 1.0
    freeze_epochs: float = 0.0

    def is_backbone(self, name: str) -> bool:
        return not name.startswith(self.new_modules)


def param_groups(model: torch.nn.Module, weight_decay: float, backbone: BackboneLR | None = None) -> list[dict]:
    """No weight decay on biases, norms, tokens and position embeddings (1-d or token params).

    With `backbone`, each group also says whether it holds backbone parameters.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "reg_token"))
        groups.setdefault((not skip, backbone is not None and backbone.is_backbone(name)), []).append(param)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "backbone": is_backbone}
        for (decay, is_backbone), params in sorted(groups.items(), reverse=True)
    ]


def group_schedules(
    groups: list[dict], base: Callable[[int], float], steps_per_epoch: int, backbone: BackboneLR | None
) -> list[Callable[[int], float]]:
    """One LR multiplier per parameter group: `base`, scaled (and frozen) for backbone groups."""
    if backbone is None:
        return [base] * len(groups)
    frozen = int(backbone.freeze_epochs * steps_per_epoch)

    def backbone_factor(step: int) -> float:
        return 0.0 if step < frozen else backbone.scale * base(step)

    return [backbone_factor if group["backbone"] else base for group in groups]


def _log_line(prefix: str, record: dict[str, float]) -> str:
    val = "".join(f"{key} {record[key]:.4f} " for key in ("val_top1", "probe_top1") if key in record)
    return (
        f"{prefix} epoch {int(record['epoch'])} train_loss {record['train_loss']:.4f} {val}"
        f"lr {record['lr']:.2e} {record['img_per_s']:.0f} img/s {record['seconds']:.1f}s"
    )


def fit(
    model: torch.nn.Module,
    data: PreparedData,
    cfg: TrainSection,
    objective: Objective,
    runtime: Runtime,
    seed: int,
    state_dir: Path,
    config_hash: str,
    name: str = "train",
    normalize: Normalizer | None = None,
    log: Callable[[str], None] = print,
    section: str | None = None,
    backbone_lr: BackboneLR | None = None,
    validate: bool = True,
    epoch_end: Callable[[torch.nn.Module], dict[str, float]] | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place for `cfg.epochs`, resuming from `state_dir`; returns the history.

    `name` labels logs; `section` (default `name`) is the params key that error messages cite.
    Images reach the model through `normalize` (`models.loading.normalizer_for`; default the data's mean
    and std at its own size, evaluated with its eval_crop_pct).
    The history has one record per epoch: epoch, train_loss, val_top1 (unless `validate` is
    off, for models without a trained classifier), lr, img_per_s, seconds, data_wait (the
    fraction of the epoch spent waiting for the next batch: a starved device shows), training_bf16 and
    inference_bf16 (1 where the epoch's steps or eval-mode forwards ran under bf16 autocast), the objective's
    `epoch_summary()` fields if it has one, and what `epoch_end(model)` measures after the
    epoch (e.g. a linear probe), if given.
    """
    section = section or name
    model.to(runtime.device)
    train_split = data.splits["train"].to(runtime.device)
    val_split = data.splits["val"].to(runtime.device)
    normalize = normalize or Normalizer(data.meta["mean"], data.meta["std"], data.image_size, runtime.device)
    note = resize_note(data.meta["image_shape"], normalize.size)
    if note:
        log(f"{name}: {note}")
    steps = steps_per_epoch(len(train_split), cfg.batch_size, cfg.repeated_aug)
    if steps == 0:
        raise MaskpruneError(
            f"{section}.batch_size {cfg.batch_size} exceeds the {len(train_split)} "
            "training images; lower it or raise data.train_limit"
        )
    mix = BatchAugment(cfg.mixup, cfg.cutmix, cfg.random_erasing, data.num_classes, runtime.device)
    if mix.mix is not None and (cfg.batch_size // runtime.world_size) % 2:
        raise MaskpruneError(f"{section}.mixup/cutmix pair the images of a batch: make batch_size per process even")
    groups = param_groups(model, cfg.weight_decay, backbone_lr)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=runtime.device.type == "cuda")
    base = warmup_cosine(steps * cfg.epochs, int(cfg.warmup_epochs * steps), cfg.min_lr / cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, group_schedules(groups, base, steps, backbone_lr))
    start_epoch, history = load_train_state(state_dir, config_hash, model, optimizer, scheduler)
    if start_epoch:
        log(f"{name}: resuming after epoch {start_epoch} from {state_dir}")
    net: torch.nn.Module = model
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    if runtime.compile:
        net = torch.compile(net)

    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(seed * 1000 + epoch)  # dropout and drop-path draws, identical on resume
        net.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
        batches = train_split.train_batches(
            cfg.batch_size, seed, epoch, runtime.device, cfg.augment, runtime.rank, runtime.world_size, cfg.repeated_aug
        )
        bar = _progress(runtime, steps, f"{name} {epoch + 1}/{cfg.epochs}")
        set_progress = getattr(objective, "set_progress", None)
        waited = 0.0
        for step in range(1, steps + 1):
            asked = time.perf_counter()
            images, labels = next(batches)
            waited += time.perf_counter() - asked
            if set_progress is not None:
                set_progress(epoch + (step - 1) / steps)
            with runtime.autocast():
                images = normalize(images)
                if mix.active:
                    images, labels = mix(images, labels, (seed, epoch, step, runtime.rank))
                loss = objective(net, images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
            if step % NONFINITE_CHECK_EVERY == 0 or step == steps:
                _check_finite(loss_sum, name, section, epoch, step, state_dir)
                if bar is not None:
                    bar.update(step - bar.n)
                    bar.set_postfix(loss=f"{loss_sum.item() / step:.4f}")
        if bar is not None:
            bar.close()
        runtime.synchronize()
        seconds = time.perf_counter() - started
        train_loss = all_reduce_sum(loss_sum, runtime).item() / (steps * runtime.world_size)
        record = {"epoch": epoch + 1, "train_loss": train_loss}
        if validate:
            record["val_top1"] = top1(net, val_split, normalize, runtime, max(256, cfg.batch_size))
        record.update(
            lr=max(group["lr"] for group in optimizer.param_groups),
            img_per_s=steps * cfg.batch_size / seconds,
            seconds=seconds,
            data_wait=waited / seconds,
            **runtime.bf16_epoch,
        )
        summary = getattr(objective, "epoch_summary", None)
        if summary is not None:
            record.update(summary())
        if epoch_end is not None:
            record.update(epoch_end(model))
        history.append(record)
        if runtime.is_main:
            save_train_state(
                state_dir,
                model,
                optimizer,
                scheduler,
                epoch + 1,
                config_hash,
                history,
                name=name,
                epochs=cfg.epochs,
            )
            log(_log_line(name, record))
    return history


def _check_finite(loss_sum: torch.Tensor, name: str, section: str, epoch: int, step: int, state_dir: Path) -> None:
    if not torch.isfinite(loss_sum):
        raise MaskpruneError(
            f"{name}: loss became non-finite in epoch {epoch + 1} by step {step}; the last good "
            f"checkpoint (epoch {epoch}) is kept in {state_dir}; lower {section}.lr or raise "
            f"{section}.grad_clip, then rerun"
        )


def _progress(runtime: Runtime, total: int, desc: str):  # noqa: ANN202 - tqdm or None
    if not runtime.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
