"""Pruning specs: default blocks, GMACs at half the tokens, pruned checkpoints round-trip."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from maskprune.checkpoint import load_model, save_model
from maskprune.errors import MaskpruneError
from maskprune.measure import gmacs
from maskprune.models.dynamicvit import DynamicViT
from maskprune.models.pruned import PruningSpec, make_pruned, pruning_blocks
from maskprune.models.vit import build_model
from tests.conftest import checkpoint_meta, cpu_params
from tests.models.tiny import tiny


def test_pruning_blocks_are_quarters_of_the_depth_and_checked() -> None:
    assert pruning_blocks(12) == (3, 6, 9)  # both papers' locations
    assert pruning_blocks(6) == (1, 3, 4)
    assert pruning_blocks(6, [0, 5]) == (0, 5)
    with pytest.raises(MaskpruneError, match=r"block\(s\) \[6\] lie beyond the model's 6 blocks"):
        pruning_blocks(6, [3, 6])
    with pytest.raises(MaskpruneError, match="keep rate 1.5 must lie in"):
        PruningSpec("evit", 1.5, (1,))
    with pytest.raises(MaskpruneError, match="keep rate 0.0 must lie in"):
        PruningSpec("dynamicvit", 0.0, (1,))
    with pytest.raises(MaskpruneError, match="unknown pruning method 'tome'"):
        PruningSpec("tome", 0.5, (1,))  # type: ignore[arg-type]


def test_gmacs_at_keep_half_are_about_half() -> None:
    x = torch.randn(1, 1, 28, 28)
    full = gmacs(tiny(), x)
    for spec in (PruningSpec("evit", 0.5, (1, 3, 4)), PruningSpec("dynamicvit", 0.5, (1, 3, 4))):
        ratio = gmacs(make_pruned(tiny(), spec), x) / full
        assert 0.35 < ratio < 0.6, (spec.method, ratio)


def test_pruned_checkpoint_round_trip(tmp_path: Path) -> None:
    spec = PruningSpec("dynamicvit", 0.7, (1, 3, 4))
    student = cpu_params().models.student
    model = make_pruned(build_model(student, num_classes=10, in_chans=1), spec).eval()
    save_model(tmp_path / "m", model, checkpoint_meta(student, pruning=spec.to_meta()))
    loaded, _ = load_model(tmp_path / "m")
    assert isinstance(loaded, DynamicViT) and loaded.prune_blocks == (1, 3, 4)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), model(x))
    assert math.isclose(loaded.keep_rate, 0.7)
