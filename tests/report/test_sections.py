"""Section helpers on hand-made per-seed results."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

from maskprune.report.checks import keep_ratio
from maskprune.report.results import SeedResult
from maskprune.report.sections_pruning import inference_keep


def test_inference_keep_counts_the_patches_each_block_still_covers_on_every_seed() -> None:
    fused = -1  # a fused token comes from no one patch
    blocks = {"1": [[0, 1, 2, 3, 4, 5, 6, 7, fused]] * 4, "3": [[0, 1, 2, 3, 4, fused]] * 3 + [[0, 1, 2, 3, fused]]}
    tokens = {"grid": 4, "models": {"prune/evit-full-0.5": blocks}}  # 16 patches
    ctx = SimpleNamespace(
        results=[SeedResult(0, Path("."), {"models": {}, "tokens": tokens}), SeedResult(1, Path("."), {"models": {}})]
    )
    realised, targets = inference_keep(ctx, ["prune/evit-full-0.5"])
    assert targets == {"prune/evit-full-0.5 after block 1": 0.5, "prune/evit-full-0.5 after block 3": 0.25}
    assert realised["prune/evit-full-0.5 after block 1"][0] == 0.5
    assert realised["prune/evit-full-0.5 after block 3"][0] == 4.75 / 16  # 16 patches cannot keep a quarter here
    assert math.isnan(realised["prune/evit-full-0.5 after block 1"][1])  # seed 1 measured no tokens
    check = keep_ratio(realised, targets, 0.02, "at inference")
    assert check.name == "realised keep ratio matches the target at inference" and not check.passed
    assert check.detail.startswith("arm prune/evit-full-0.5 after block 1 seed 1: kept nan%")
    assert "after block 3 seed 0: kept 29.69% vs target 25.00% (off by 4.69 points" in check.detail
