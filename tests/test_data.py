"""Preparing datasets and feeding them: splits, statistics, atomic output, augmentation, sharding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maskprune.config import DataSection
from maskprune.data.loader import Normalizer, eval_batches, load_prepared, shift_and_flip, train_batches
from maskprune.data.prepare import channel_stats, prepare_dataset, split_indices
from maskprune.errors import MaskpruneError
from tests.conftest import write_idx


def test_prepare_writes_splits_meta_and_checksums(idx_root: Path, tmp_path: Path) -> None:
    cfg = DataSection(name="fashion_mnist", root=str(idx_root), val_fraction=0.25)
    meta = prepare_dataset(cfg, seed=3, out_root=tmp_path / "prepared")
    assert meta["counts"] == {"train": 150, "val": 50, "test": 50}
    assert meta["classes"][0] == "t-shirt/top" and meta["num_classes"] == 10
    assert meta["image_shape"] == [1, 28, 28]
    assert len(meta["sources"]) == 4 and all(len(h) == 64 for h in meta["sources"].values())
    data = load_prepared(tmp_path / "prepared" / "fashion_mnist")
    assert data.splits["train"].images.dtype == torch.uint8
    assert data.splits["train"].images.shape == (150, 1, 28, 28)
    # the split is a partition of the training file, reproducible from the seed
    again = prepare_dataset(cfg, seed=3, out_root=tmp_path / "again")
    assert again == meta
    assert np.array_equal(np.load(tmp_path / "again/fashion_mnist/val_labels.npy"), data.splits["val"].labels.numpy())


def test_limits_and_split_sizes() -> None:
    train, val = split_indices(1000, val_fraction=0.1, limit=200, seed=0)
    assert (len(train), len(val)) == (180, 20)
    assert not set(train.tolist()) & set(val.tolist())
    train, val = split_indices(10, val_fraction=0.1, limit=0, seed=0)
    assert (len(train), len(val)) == (9, 1)


def test_channel_stats_by_hand() -> None:
    images = np.array([[[[0, 255]]], [[[255, 255]]]], dtype=np.uint8)  # 4 pixels: 0, 1, 1, 1
    mean, std = channel_stats(images)
    assert mean == [0.75] and std == [pytest.approx(0.433013, abs=1e-6)]


def test_missing_dataset_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(MaskpruneError, match="not found under .*set data.root"):
        prepare_dataset(DataSection(root=str(tmp_path)), 0, tmp_path / "out")
    default = DataSection()
    if not Path(default.root, "train-images-idx3-ubyte.gz").exists():
        with pytest.raises(MaskpruneError, match="apt-get install dataset-fashion-mnist"):
            prepare_dataset(default, 0, tmp_path / "out")


def test_corrupt_dataset_writes_nothing(idx_root: Path, tmp_path: Path) -> None:
    write_idx(idx_root / "t10k-labels-idx1-ubyte.gz", np.full(50, 11))
    out = tmp_path / "prepared"
    with pytest.raises(MaskpruneError, match="label 11 is out of range"):
        prepare_dataset(DataSection(root=str(idx_root)), 0, out)
    assert not out.exists() or not any(out.iterdir())  # no partial or temporary folder left


def test_failed_rewrite_keeps_previous_output(idx_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare_dataset(DataSection(root=str(idx_root)), 0, out)
    before = (out / "fashion_mnist" / "meta.json").read_text()
    (idx_root / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(MaskpruneError):
        prepare_dataset(DataSection(root=str(idx_root)), 0, out)
    assert (out / "fashion_mnist" / "meta.json").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["fashion_mnist"]


def test_image_folder_source(tmp_path: Path) -> None:
    from PIL import Image

    for split, n in (("train", 7), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "tree" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 20, 0, 200 if cls == "dog" else 0)).save(folder / f"{i}.png")
    cfg = DataSection(name="pets", format="imagefolder", root=str(tmp_path / "tree"), val_fraction=0.25)
    meta = prepare_dataset(cfg, 0, tmp_path / "prepared")
    assert meta["classes"] == ["cat", "dog"] and meta["image_shape"] == [3, 8, 8]
    assert meta["counts"] == {"train": 10, "val": 4, "test": 4}
    assert list(meta["sources"])[0].startswith("18 files under")


def test_missing_prepared_data_names_the_stage(tmp_path: Path) -> None:
    with pytest.raises(MaskpruneError, match="run `dvc repro prepare` first"):
        load_prepared(tmp_path)


def test_shift_and_flip_by_hand() -> None:
    image = torch.arange(9, dtype=torch.uint8).reshape(1, 1, 3, 3)  # rows 0 1 2 / 3 4 5 / 6 7 8
    down_right = shift_and_flip(image, torch.tensor([[1, 1]]), torch.tensor([False]))
    assert down_right[0, 0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 3, 4]]
    flipped = shift_and_flip(image, torch.tensor([[0, 0]]), torch.tensor([True]))
    assert flipped[0, 0].tolist() == [[2, 1, 0], [5, 4, 3], [8, 7, 6]]
    up = shift_and_flip(image, torch.tensor([[-1, 0]]), torch.tensor([False]))
    assert up[0, 0].tolist() == [[3, 4, 5], [6, 7, 8], [0, 0, 0]]


def test_rank_shards_partition_the_global_batch() -> None:
    single = list(train_batches(100, 20, seed=5, epoch=2))
    shards = [list(train_batches(100, 20, seed=5, epoch=2, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == 5  # the last incomplete batch is dropped
    for step, (idx, shifts, flips) in enumerate(single):
        assert torch.equal(torch.cat([shards[0][step][0], shards[1][step][0]]), idx)
        assert torch.equal(torch.cat([shards[0][step][1], shards[1][step][1]]), shifts)
        assert torch.equal(torch.cat([shards[0][step][2], shards[1][step][2]]), flips)
    assert not torch.equal(single[0][0], next(iter(train_batches(100, 20, seed=5, epoch=3)))[0])
    with pytest.raises(MaskpruneError, match="not divisible by 3"):
        next(train_batches(100, 20, 0, 0, rank=0, world_size=3))
    assert torch.cat(list(eval_batches(10, 3, rank=1, world_size=2))).tolist() == [1, 3, 5, 7, 9]


def test_normalizer_scales_and_resizes() -> None:
    norm = Normalizer([0.5], [0.25], size=4, device=torch.device("cpu"))
    out = norm(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8))
    assert out.shape == (1, 1, 4, 4)
    torch.testing.assert_close(out, torch.full((1, 1, 4, 4), 2.0))
