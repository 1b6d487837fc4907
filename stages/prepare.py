"""DVC stage `prepare`: raw dataset -> data/prepared/<name>/ (uint8 arrays + meta.json).

A seeded train/val split, channel statistics, compact uint8 arrays on disk. Output folder
`data/prepared/<name>/`: `{train,val,test}_images.npy` (uint8 `[n, channels, h, w]`),
`{train,val,test}_labels.npy` (int64 `[n]`) and `meta.json`. The folder appears whole or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from maskprune import atomic
from maskprune.cli import run_stage
from maskprune.config import DataSection, Params
from maskprune.data.sources import read_raw
from maskprune.data.splits import build_splits, channel_stats, source_checksums
from maskprune.layout import PREPARED_DIR, prepared_dir
from maskprune.runtime import Runtime
from maskprune.tracking.runs import StageRecord


def prepare_dataset(cfg: DataSection, seed: int, out_root: Path) -> dict[str, Any]:
    """Read the raw dataset named by `cfg`, write `<out_root>/<cfg.name>/`, return its meta."""
    raw = read_raw(cfg)
    splits = build_splits(raw, cfg, seed)
    mean, std = channel_stats(splits["train"][0])
    meta = {
        "name": cfg.name,
        "format": cfg.format,
        "classes": list(raw.classes),
        "num_classes": len(raw.classes),
        "image_shape": list(raw.train_images.shape[1:]),
        "resize": "none here; a model whose img_size differs resizes at load (bilinear) and says so",
        "mean": mean,
        "std": std,
        "counts": {split: int(len(labels)) for split, (_, labels) in splits.items()},
        "seed": seed,
        "val_fraction": cfg.val_fraction,
        "sources": source_checksums(raw.files),
    }
    with atomic.atomic_dir(out_root / cfg.name) as tmp:
        for split, (images, labels) in splits.items():
            np.save(tmp / f"{split}_images.npy", np.ascontiguousarray(images))
            np.save(tmp / f"{split}_labels.npy", labels)
        atomic.write_json(tmp / "meta.json", meta)
    return meta


def compute(params: Params, root: Path, runtime: Runtime) -> None:
    meta = prepare_dataset(params.data, params.data.seed, root / PREPARED_DIR)
    channels, height, width = meta["image_shape"]
    print(
        f"prepare: {meta['name']} {meta['counts']}, {channels}x{height}x{width} images "
        f"(a model with another img_size resizes them, bilinear) -> {prepared_dir(meta['name'])}"
    )


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
