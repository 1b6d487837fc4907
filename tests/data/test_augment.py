"""DeiT's augmentations: mixup/cutmix soft targets as timm's, seeded batch draws, repeated augmentation's order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskprune.data.augment import BatchAugment
from maskprune.data.loader import steps_per_epoch, train_batches
from maskprune.errors import MaskpruneError
from tests.conftest import cpu_params, updated

CPU = torch.device("cpu")


def test_mixed_targets_with_smoothing_in_the_loss_equal_timms_smoothed_targets() -> None:
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    torch.manual_seed(0)
    images, labels, logits = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,)), torch.randn(8, 5)
    ours = BatchAugment(mixup=0.8, cutmix=1.0, erasing=0.0, num_classes=5, device=CPU)
    mixed, soft = ours(images.clone(), labels, (1, 2, 3, 0))
    np.random.seed(ours_seed := 12345)
    timm_mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=5)
    np.random.seed(ours_seed)
    _, timm_soft = timm_mix(images.clone(), labels)
    np.random.seed(ours_seed)
    _, plain_soft = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=5)(images.clone(), labels)
    # smoothing the mixed one-hot targets in the loss is timm's smoothing of each one-hot before mixing
    torch.testing.assert_close(
        F.cross_entropy(logits, plain_soft, label_smoothing=0.1), SoftTargetCrossEntropy()(logits, timm_soft)
    )
    assert soft.shape == (8, 5) and torch.allclose(soft.sum(dim=1), torch.ones(8))
    assert not torch.equal(mixed, images)


def test_batch_draws_are_seeded_by_seed_epoch_step_and_rank() -> None:
    images, labels = torch.randn(6, 3, 16, 16), torch.arange(6) % 3
    augment = BatchAugment(mixup=0.8, cutmix=0.0, erasing=1.0, num_classes=3, device=CPU)
    first = augment(images.clone(), labels, (0, 1, 2, 0))
    again = augment(images.clone(), labels, (0, 1, 2, 0))
    other = augment(images.clone(), labels, (0, 1, 3, 0))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert not BatchAugment(0.0, 0.0, 0.0, 3, CPU).active


def test_repeated_augmentation_orders_each_image_in_a_row_for_every_process_count() -> None:
    n, batch = 600, 48  # 512 places (600 rounded down to 256s): 170 images 3 times and one twice
    single = list(train_batches(n, batch, seed=4, epoch=1, repeats=3))
    assert len(single) == steps_per_epoch(n, batch, repeats=3) == 512 // batch
    order = torch.cat([idx for idx, _, _ in single])
    runs = order.view(-1, 3)[:-1]  # the last incomplete triple may be cut by the batch
    assert bool((runs == runs[:, :1]).all())
    two = [list(train_batches(n, batch, seed=4, epoch=1, rank=r, world_size=2, repeats=3)) for r in (0, 1)]
    for (idx, _, _), (a, _, _), (b, _, _) in zip(single, *two, strict=True):
        assert torch.equal(idx, torch.cat([a, b]))
    assert not torch.equal(order, torch.cat([i for i, _, _ in train_batches(n, batch, seed=4, epoch=2, repeats=3)]))


def test_rand_augment_needs_the_random_resized_crop() -> None:
    with pytest.raises(ValueError, match="set train_crop: random_resized"):
        updated(cpu_params().data, rand_augment="rand-m9-mstd0.5-inc1")
    with pytest.raises(ValueError, match="not a timm RandAugment config"):
        updated(cpu_params().data, train_crop="random_resized", rand_augment="autoaugment")


def test_the_memory_storage_refuses_a_crop_it_cannot_make(tmp_path) -> None:  # noqa: ANN001
    from stages.prepare import prepare_dataset

    cfg = updated(cpu_params().data, storage="memory", train_crop="random_resized")
    with pytest.raises(MaskpruneError, match="set data.storage to shards or auto"):
        prepare_dataset(cfg, 0, tmp_path, log=lambda _: None)
