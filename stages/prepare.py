"""DVC stage `prepare`: raw dataset -> data/prepared/<name>/, in memory arrays or in shards, + meta.json.

A seeded train/val split, channel statistics and the source's digest, in one of two storages
(`data.storage`; auto chooses by size against `data.memory_budget_gb` and says which):

- memory: `{train,val,test}_images.npy` (uint8 `[n, channels, h, w]`), `{train,val,test}_labels.npy`
  (int64 `[n]`). The folder appears whole or not at all.
- shards: `{split}-NNNNNN.tar` (WebDataset layout: the source's encoded bytes and the label) and
  `{split}.index.npy`, written by every core in bounded memory (`maskprune.data.shards`). The work
  happens in `.<name>.partial/`, which a prepare that was cut off resumes from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from maskprune import atomic
from maskprune.cli import run_stage
from maskprune.config import DataSection, Params
from maskprune.data import shards
from maskprune.data.sources import ARRAY_READERS, LISTERS, Entry, Listing, RawSplits, decode_listing, image_shape
from maskprune.data.splits import (
    build_splits,
    channel_stats,
    check_class_coverage,
    source_checksums,
    split_indices,
    subset_indices,
)
from maskprune.errors import MaskpruneError
from maskprune.layout import PREPARED_DIR, prepared_dir
from maskprune.runtime import Runtime
from maskprune.tracking.runs import StageRecord

HEADER_SAMPLE = 32  # images whose headers tell auto their size
SHARD_FORMAT = 1  # the version of the shard layout, part of the plan a resumed prepare must match


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def choose_storage(cfg: DataSection, images: int, channels: int, shapes: set[tuple[int, int]]) -> tuple[str, str]:
    """(storage, why): `cfg.storage` unless auto, which keeps memory for one image size within the budget."""
    if cfg.storage == "memory" and cfg.train_crop == "random_resized":
        raise MaskpruneError(
            "data.train_crop random_resized crops in the loader, which the memory storage has not: "
            "set data.storage to shards or auto, or data.train_crop to shift"
        )
    if cfg.storage != "auto":
        return cfg.storage, f"data.storage is {cfg.storage}"
    if cfg.train_crop == "random_resized":
        return "shards", "data.train_crop random_resized crops in the loader"
    if len(shapes) > 1:
        return "shards", f"images differ in size ({len(shapes)} sizes among those sampled)"
    (height, width) = next(iter(shapes))
    if cfg.image_size and (height, width) != (cfg.image_size, cfg.image_size):
        return "shards", f"images of {height}x{width} are cropped to data.image_size {cfg.image_size}"
    gigabytes = images * channels * height * width / 1e9
    if gigabytes > cfg.memory_budget_gb:
        return "shards", f"{gigabytes:.2f} GB of arrays exceed data.memory_budget_gb {cfg.memory_budget_gb}"
    return "memory", f"{gigabytes:.3f} GB of arrays fit data.memory_budget_gb {cfg.memory_budget_gb}"


def _base_meta(cfg: DataSection, classes: tuple[str, ...], counts: dict[str, int], seed: int) -> dict[str, Any]:
    """The meta.json keys both storages write."""
    return {
        "name": cfg.name,
        "format": cfg.format,
        "classes": list(classes),
        "num_classes": len(classes),
        "counts": counts,
        "seed": seed,
        "val_fraction": cfg.val_fraction,
    }


def prepare_memory(
    cfg: DataSection, seed: int, out_root: Path, raw: RawSplits, log: Callable[[str], None]
) -> dict[str, Any]:
    """The memory storage: every split as uint8 arrays, written whole or not at all."""
    splits = build_splits(raw, cfg, seed)
    check_class_coverage({split: labels for split, (_, labels) in splits.items()}, raw.classes, log)
    mean, std = channel_stats(splits["train"][0])
    meta = {
        **_base_meta(cfg, raw.classes, {split: int(len(labels)) for split, (_, labels) in splits.items()}, seed),
        "storage": "memory",
        "image_shape": list(raw.train_images.shape[1:]),
        "resize": "none here; a model whose img_size differs resizes at load (bilinear) and says so",
        "mean": mean,
        "std": std,
        "sources": source_checksums(raw.files),
    }
    with atomic.atomic_dir(out_root / cfg.name) as tmp:
        for split, (images, labels) in splits.items():
            np.save(tmp / f"{split}_images.npy", np.ascontiguousarray(images))
            np.save(tmp / f"{split}_labels.npy", labels)
        atomic.write_json(tmp / "meta.json", meta)
    return meta


def _array_entries(raw_labels: dict[str, np.ndarray], channels: int, shape: tuple[int, ...]) -> dict[str, list[Entry]]:
    size = channels * int(np.prod(shape))
    return {
        split: [Entry(f"{shards.ARRAY_SOURCE}{split}", i, size, int(label), "png") for i, label in enumerate(labels)]
        for split, labels in raw_labels.items()
    }


def split_entries(train: list[Entry], test: list[Entry], cfg: DataSection, seed: int) -> dict[str, list[Entry]]:
    """The seeded train/val split and test subset (as the memory storage draws them), each shuffled (seeded)."""
    train_idx, val_idx = split_indices(len(train), cfg.val_fraction, cfg.train_limit, seed)
    chosen = {"train": [train[i] for i in train_idx], "val": [train[i] for i in val_idx]}
    chosen["test"] = [test[i] for i in subset_indices(len(test), cfg.test_limit, seed)]
    return {split: [entries[i] for i in shard_order(len(entries), seed)] for split, entries in chosen.items()}


def shard_order(n: int, seed: int) -> np.ndarray:
    """The seeded order in which a split's `n` images are written to its shards (the same for every split)."""
    return np.random.default_rng(seed + 2).permutation(n)


def _plan_digest(cfg: DataSection, seed: int, splits: dict[str, list[Entry]], sources: str) -> str:
    digest = hashlib.sha256()
    fields = ("name", "format", "root", "val_fraction", "train_limit", "test_limit", "shard_mb", "skip_unreadable")
    digest.update(json.dumps({"version": SHARD_FORMAT, "seed": seed, **{f: getattr(cfg, f) for f in fields}}).encode())
    digest.update(sources.encode())
    for split, entries in splits.items():
        digest.update(split.encode())
        for entry in entries:
            digest.update(f"{entry.path}\0{entry.offset}\0{entry.size}\0{entry.label}\n".encode())
    return digest.hexdigest()


def _view_meta(cfg: DataSection, channels: int, sizes: list[list[int]]) -> dict[str, Any]:
    side = cfg.image_size
    if not side:
        if len(sizes) > 1 or sizes[0][0] != sizes[0][1]:
            shown = ", ".join(f"{h}x{w}" for h, w in sizes)
            raise MaskpruneError(
                f"images are not all one square size (e.g. {shown}): set data.image_size to the side the loader "
                "crops them to (e.g. 224); the shards are kept, so the rerun only writes meta.json"
            )
        side = sizes[0][0]
    return {
        "image_shape": [channels, side, side],
        "view": {
            "train_crop": cfg.train_crop,
            "crop_scale": list(cfg.crop_scale),
            "rand_augment": cfg.rand_augment,
            "eval_crop_pct": cfg.eval_crop_pct,
        },
        "resize": f"the loader crops every image to {side}x{side} (evaluation: short side to "
        f"{side}/{cfg.eval_crop_pct} then the centre; training: {cfg.train_crop})",
    }


def prepare_shards(
    cfg: DataSection,
    seed: int,
    out_root: Path,
    source: RawSplits | Listing,
    log: Callable[[str], None],
    workers: int,
) -> dict[str, Any]:
    """The sharded storage: plan, write (resuming what a cut-off run wrote), index, meta; swap in whole."""
    if isinstance(source, RawSplits):
        raw = source
        channels = raw.train_images.shape[1]
        shards.set_array_sources({"train": raw.train_images, "test": raw.test_images})
        raw_entries = _array_entries(
            {"train": raw.train_labels, "test": raw.test_labels}, channels, raw.train_images.shape[2:]
        )
        classes, sources = raw.classes, json.dumps(source_checksums(raw.files), sort_keys=True)
        train, test = raw_entries["train"], raw_entries["test"]
    else:
        channels, classes, sources = 3, source.classes, ""
        train, test = source.train, source.test
    splits = split_entries(train, test, cfg, seed)
    check_class_coverage({s: np.array([e.label for e in es], np.int64) for s, es in splits.items()}, classes, log)
    plan = _plan_digest(cfg, seed, splits, sources)
    final = out_root / cfg.name
    old_meta = json.loads((final / "meta.json").read_text()) if (final / "meta.json").is_file() else {}
    if old_meta.get("plan") == plan:  # NOTE: the same shards; only how the loader crops them may have changed
        meta = {**old_meta, **_view_meta(cfg, channels, old_meta["native_sizes"])}
        atomic.write_json(final / "meta.json", meta)
        log(f"prepare: the shards in {final} match this plan; meta.json rewritten")
        return meta
    work = out_root / f".{cfg.name}.partial"
    if (work / "plan.txt").is_file() and (work / "plan.txt").read_text() != plan:
        log(f"prepare: {work} holds another plan's shards; starting again")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "plan.txt").write_text(plan)
    tasks = shards.plan_shards(splits, cfg.shard_mb * 1_000_000, channels, cfg.skip_unreadable)
    log(f"prepare: {sum(map(len, splits.values()))} images -> {len(tasks)} shards, {workers} processes")
    results = shards.write_all(tasks, work, workers, log)
    sizes = sorted({tuple(size) for task in tasks for size in results[task.name].sizes})[:2]
    view = _view_meta(cfg, channels, sizes)
    indexes = shards.finish(work, tasks, results)
    train_results = [results[t.name] for t in tasks if t.split == "train"]
    pixels = sum(r.pixels for r in train_results)
    mean = sum(r.sums for r in train_results) / pixels
    std = np.sqrt(np.maximum(sum(r.squares for r in train_results) / pixels - mean**2, 0.0))
    skipped = sorted(name for r in results.values() for name in r.skipped)
    digest = sum(r.digest for r in results.values()) % 2**256
    per_split = {split: [t for t in tasks if t.split == split] for split in splits}
    meta = {
        **_base_meta(cfg, classes, {split: int(len(index)) for split, index in indexes.items()}, seed),
        "storage": "shards",
        **view,
        "native_sizes": [list(size) for size in sizes],
        "mean": (mean / 255.0).round(6).tolist(),
        "std": (std / 255.0).round(6).tolist(),
        "sources": {f"{len(train) + len(test)} images under {cfg.root}": f"{digest:064x}"},
        "shards": {split: shards.shard_pattern(split, len(ts)) for split, ts in per_split.items()},
        "index": {split: shards.index_name(split) for split in splits},
        "skipped": {"count": len(skipped), "files": skipped},
        "plan": plan,
    }
    (work / "plan.txt").unlink()
    atomic.write_json(work / "meta.json", meta)
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    return meta


def prepare_dataset(
    cfg: DataSection,
    seed: int,
    out_root: Path,
    log: Callable[[str], None] = print,
    workers: int = 0,
) -> dict[str, Any]:
    """Read the raw dataset named by `cfg`, write `<out_root>/<cfg.name>/` in the chosen storage, return its meta.

    Args:
        cfg: the data section.
        seed: the split's seed.
        out_root: the folder of prepared datasets.
        log: where progress lines go.
        workers: processes writing shards (0 = every core).
    """
    source: RawSplits | Listing
    if cfg.format in ARRAY_READERS:
        source = ARRAY_READERS[cfg.format](cfg)
        images, channels = len(source.train_labels) + len(source.test_labels), source.train_images.shape[1]
        shapes = {tuple(source.train_images.shape[2:])}
    else:
        source = LISTERS[cfg.format](cfg)
        entries = source.train + source.test
        images, channels = len(entries), 3
        shapes = {image_shape(e) for e in entries[:: max(1, len(entries) // HEADER_SAMPLE)]}
    storage, why = choose_storage(cfg, images, channels, shapes)
    log(f"prepare: storage {storage} ({why})")
    if storage == "memory":
        return prepare_memory(
            cfg, seed, out_root, source if isinstance(source, RawSplits) else decode_listing(source), log
        )
    return prepare_shards(cfg, seed, out_root, source, log, workers or _cores())


def compute(params: Params, root: Path, runtime: Runtime) -> None:
    meta = prepare_dataset(params.data, params.data.seed, root / PREPARED_DIR)
    shape = "x".join(map(str, meta["image_shape"]))
    out = prepared_dir(meta["name"])
    print(f"prepare: {meta['name']} {meta['counts']}, {shape} images ({meta['resize']}) -> {out}")


def record(params: Params, root: Path) -> StageRecord:
    meta_path = root / prepared_dir(params.data.name) / "meta.json"
    meta = json.loads(meta_path.read_text())
    return StageRecord(
        stage="prepare",
        params={"data": params.data.model_dump()},
        metrics={f"count_{split}": n for split, n in meta["counts"].items()},
        artifacts=[meta_path],
    )


if __name__ == "__main__":
    run_stage("prepare", compute, record)
