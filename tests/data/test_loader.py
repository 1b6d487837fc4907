"""Prepared data in memory: augmentation, rank shards, normalisation, missing data (maskprune.data.loader)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskprune.data.augment import shift_and_flip
from maskprune.data.loader import Normalizer, eval_batches, resize_note, train_batches
from maskprune.data.storage import load_prepared
from maskprune.errors import MaskpruneError


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


def test_resize_note_names_both_sizes_or_is_none() -> None:
    assert resize_note([1, 28, 28], 28) is None
    assert resize_note([3, 28, 20], 32) == "28x20 images are resized to 32x32 (bilinear) for this model"
