"""Section helpers on hand-made per-seed results."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

from maskprune.report.checks import keep_ratio
from maskprune.report.model import SeedRatios
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


def test_a_throughput_ratio_over_seeds_is_the_median_of_the_seeds_whose_a_a_control_holds() -> None:
    # seed 1 reads 1.83x from 0.73x of the GMACs (impossible, its A/A 0.96 notwithstanding); seeds 2 and 4's
    # controls stray by 6%: the mean of all five would read 1.42x
    ratios = {0: 1.30, 1: 1.83, 2: 1.32, 3: 1.28, 4: 1.39}
    speed = SeedRatios(ratios, {0: 0.98, 1: 0.96, 2: 0.938, 3: 1.01, 4: 0.941})
    assert speed.value == 1.30  # median of 1.30, 1.83, 1.28
    assert speed.text() == "1.30x (left out, A/A off by over 5%: seed 2 0.94, seed 4 0.94)"
    assert SeedRatios(ratios, dict.fromkeys(ratios, 1.0)).text() == "1.32x"
    assert SeedRatios({0: 1.52}, {0: 1.08}).text() == "noisy (1.52x, A/A 1.08)"  # nothing left: all of it, flagged
    assert SeedRatios({0: 1.52, 1: 1.40}, {0: 1.08, 1: 0.90}).text() == "noisy (1.46x, A/A 1.08, 0.90)"
    assert SeedRatios({0: 1.52}, {}).text() == "1.52x (no A/A)"
    assert SeedRatios({}, {}).text() == "-" and math.isnan(SeedRatios({}, {}).value)
