"""Seeded train/val splits, limits and channel statistics (maskprune.data.splits)."""

from __future__ import annotations

import numpy as np
import pytest

from maskprune.data.splits import channel_stats, split_indices, stratified_indices


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


def test_stratified_indices_take_the_classes_in_turn_on_a_class_sorted_split() -> None:
    labels = np.repeat(np.arange(10), 30)  # sorted by class, as an ImageFolder tree reads
    six = stratified_indices(labels, 6, seed=0)
    assert len(set(six)) == 6 and len({int(labels[i]) for i in six}) == 6
    twenty_five = stratified_indices(labels, 25, seed=0)
    per_class = np.bincount(labels[twenty_five], minlength=10)
    assert len(set(twenty_five)) == 25 and per_class.max() - per_class.min() <= 1
    assert stratified_indices(labels, 6, seed=0) == six != stratified_indices(labels, 6, seed=1)
    uneven = np.array([0, 0, 0, 0, 1])  # class 1 runs out: the rest come from class 0
    assert sorted(stratified_indices(uneven, 5, seed=3)) == [0, 1, 2, 3, 4]
