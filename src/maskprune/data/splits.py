"""The parts of preparing a dataset: seeded splits and subsets, channel statistics, source checksums.

The prepare stage (stages/prepare.py) builds data/prepared/<name>/ from them; the loader and the
stages that draw seeded subsets of a split use `subset_indices`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from maskprune.config import DataSection
from maskprune.data.sources import RawSplits, sha256_of
from maskprune.errors import MaskpruneError

SPLITS = ("train", "val", "test")


def split_indices(n: int, val_fraction: float, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, val) index arrays over `n` items; `limit` > 0 first keeps that many items."""
    order = np.random.default_rng(seed).permutation(n)
    if limit:
        order = order[: min(limit, n)]
    n_val = max(1, int(round(len(order) * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def subset_indices(n: int, limit: int, seed: int) -> np.ndarray:
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed + 1).permutation(n)[:limit])


def stratified_indices(labels: np.ndarray, count: int, seed: int) -> list[int]:
    """`count` distinct indices into `labels` `[n]`, a seeded draw that takes the classes in turn.

    The classes come in a seeded order and each turn takes one not-yet-drawn image per class, so
    `count` images cover min(count, classes) classes and no class is drawn twice before every class
    with images left is drawn once, however the split is sorted.
    """
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    picked: list[int] = []
    while len(picked) < min(count, len(labels)):
        for c in classes:
            if pools[int(c)] and len(picked) < count:
                picked.append(int(pools[int(c)].pop()))
    return picked


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images `[n, c, h, w]`, on the 0..1 scale."""
    pixels = images.transpose(1, 0, 2, 3).reshape(images.shape[1], -1).astype(np.float64) / 255.0
    return pixels.mean(axis=1).round(6).tolist(), pixels.std(axis=1).round(6).tolist()


def source_checksums(files: list[Path], max_listed: int = 16) -> dict[str, str]:
    """sha256 per source file; beyond `max_listed` files, one digest over all of them."""
    if len(files) <= max_listed:
        return {str(path): sha256_of(path) for path in files}
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path}:{sha256_of(path)}\n".encode())
    return {f"{len(files)} files under {os.path.commonpath(files)}": digest.hexdigest()}


def build_splits(raw: RawSplits, cfg: DataSection, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    train_idx, val_idx = split_indices(len(raw.train_labels), cfg.val_fraction, cfg.train_limit, seed)
    test_idx = subset_indices(len(raw.test_labels), cfg.test_limit, seed)
    return {
        "train": (raw.train_images[train_idx], raw.train_labels[train_idx]),
        "val": (raw.train_images[val_idx], raw.train_labels[val_idx]),
        "test": (raw.test_images[test_idx], raw.test_labels[test_idx]),
    }


def missing_classes(labels: np.ndarray, classes: tuple[str, ...]) -> list[str]:
    """The classes with no image among `labels` `[n]`."""
    counts = np.bincount(labels, minlength=len(classes))
    return [classes[c] for c in np.flatnonzero(counts == 0)]


def check_class_coverage(
    labels: dict[str, np.ndarray],
    classes: tuple[str, ...],
    log: Callable[[str], None],
) -> None:
    """Every class needs training and test images, or accuracy and chance mean nothing; one line if not.

    A class without validation images only costs the validation top-1 that class, so it is a warning.

    Args:
        labels: the labels `[n]` of each split (train, val, test).
        classes: the class names, by label.
        log: where the warning goes.
    """
    for split, split_labels in labels.items():
        empty = missing_classes(split_labels, classes)
        if not empty:
            continue
        listed = ", ".join(map(repr, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        if split == "val":
            log(f"prepare: warning: class(es) {listed} have no val images; raise data.val_fraction to include them")
            continue
        raise MaskpruneError(
            f"class(es) {listed} have no {split} images; add images of those classes, "
            "raise the data limits, or remove their folders"
        )
