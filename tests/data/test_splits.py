"""Seeded train/val splits, limits and channel statistics (maskprune.data.splits)."""

from __future__ import annotations

import numpy as np
import pytest

from maskprune.data.splits import channel_stats, split_indices


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
