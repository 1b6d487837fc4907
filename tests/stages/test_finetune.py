"""The finetune stage's arms: who teaches each, what each teacher and student see; bad variants refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskprune.errors import MaskpruneError
from maskprune.runtime import Runtime
from stages.finetune import compute, student_masking, teacher_view
from tests.conftest import cpu_params
from tests.models.tiny import tiny

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, compile=False, progress=False)


def test_unknown_variant_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(
        MaskpruneError,
        match="unknown finetune variant 'masky'; choose one of full, full_kd, masked_kd, random_kd, masked",
    ):
        compute(cpu_params(), tmp_path, CPU, "masky")


def test_the_maskedkd_arms_differ_only_by_the_patches_the_teacher_sees() -> None:
    cfg = cpu_params().finetune  # masked_kd: teacher_keep 0.75, student_attn
    teacher = tiny()
    views = {arm: teacher_view(cfg, arm, teacher) for arm in ("full_kd", "masked_kd", "random_kd", "masked")}
    patches = teacher.num_patches
    assert views["full_kd"].keep == views["masked"].keep == patches
    assert views["masked_kd"].keep == views["random_kd"].keep == patches * 3 // 4
    assert (views["masked_kd"].criterion, views["random_kd"].criterion) == ("student_attn", "random")
    assert teacher_view(cfg, "full", None) is None  # the no-KD arm has no teacher


def test_only_masked_finetuning_masks_the_student_beyond_maskedkd_own_setting() -> None:
    cfg = cpu_params().finetune
    assert student_masking(cfg, "full").ratios == student_masking(cfg, "full_kd").ratios == [1.0]
    assert student_masking(cfg, "random_kd").ratios == cfg.masked_kd.keep_ratios
    assert student_masking(cfg, "masked").ratios == [1.0, 0.75, 0.5, 0.25]
