"""The report's warnings, on hand-made numbers (maskprune.report.build)."""

from __future__ import annotations

import pytest

from maskprune.report.build import near_chance


def test_models_barely_above_chance_are_named_worst_first() -> None:
    top1 = {"teacher": 0.85, "finetune/masked": 0.18, "prune/evit-full-0.5": 0.11, "tome/full-r5": 0.195}
    assert near_chance(top1, num_classes=10) == ["prune/evit-full-0.5", "finetune/masked"]  # the bar: 0.19


@pytest.mark.parametrize(("top1", "flagged"), [(0.54, True), (0.56, False)])
def test_the_bar_for_two_classes_is_a_tenth_of_the_way_from_half_to_one(top1: float, flagged: bool) -> None:
    assert near_chance({"model": top1}, num_classes=2) == (["model"] if flagged else [])
