"""`python -m maskprune.plan`: images, GMACs and GPU-hours per stage, against hand-computed costs."""

from __future__ import annotations

from datetime import datetime

import pytest

from maskprune.plan import TRAIN_COST, Costs, gpu_rate, main, stage_loops
from maskprune.profile import profile_params
from tests.conftest import REPO

# Hand-computed MACs of a ViT forward on 49 patches + [CLS] = 50 tokens, 16-value patches (4x4x1), 10
# classes: per block qkv + proj + MLP (4x) = 50 * dim * 12 * dim, plus q.k and attn.v = 2 * 50^2 * dim;
# then the patch embedding (49 * 16 * dim) and the head (dim * 10).
STUDENT_GMACS = (6 * (50 * 128 * 12 * 128 + 2 * 50**2 * 128) + 49 * 16 * 128 + 128 * 10) / 1e9  # dim 128
TEACHER_GMACS = (6 * (50 * 192 * 12 * 192 + 2 * 50**2 * 192) + 49 * 16 * 192 + 192 * 10) / 1e9  # dim 192


@pytest.fixture(scope="module")
def smoke_loops() -> dict:
    params = profile_params("smoke", REPO)
    return stage_loops(params, Costs(params, num_classes=10, in_chans=1), train=1000, test=500)


def test_models_cost_what_the_hand_count_says() -> None:
    costs = Costs(profile_params("smoke", REPO), num_classes=10, in_chans=1)
    assert costs.forward("student") == pytest.approx(STUDENT_GMACS, rel=1e-9)
    assert costs.forward("teacher") == pytest.approx(TEACHER_GMACS, rel=1e-9)
    assert costs.pruned("evit", 1.0) == pytest.approx(STUDENT_GMACS, rel=1e-3)  # nothing dropped: the same cost
    assert costs.pruned("evit", 0.5) < 0.8 * STUDENT_GMACS


def test_each_stage_counts_its_trained_and_frozen_models(smoke_loops: dict) -> None:
    params = profile_params("smoke", REPO)
    epochs, limit = params.finetune.train.epochs, params.finetune.train.train_limit
    (full,) = smoke_loops["finetune@full"]
    assert (full.epochs, full.images) == (epochs, min(1000, limit) if limit else 1000)
    assert full.gmacs == pytest.approx(TRAIN_COST * STUDENT_GMACS)
    (kd,) = smoke_loops["finetune@full_kd"]
    assert kd.gmacs == pytest.approx(TRAIN_COST * STUDENT_GMACS + TEACHER_GMACS)  # the teacher only runs forward
    (masked_kd,) = smoke_loops["finetune@masked_kd"]
    assert TRAIN_COST * STUDENT_GMACS < masked_kd.gmacs < kd.gmacs  # MaskedKD's teacher sees half the patches
    assert "prepare" not in smoke_loops and "report" not in smoke_loops  # CPU stages
    assert [loop.what for loop in smoke_loops["distill@vit-scratch"]] == ["fine-tune with labels"]


def test_the_gpu_rate_names_its_benchmark_and_age() -> None:
    rate, source = gpu_rate(REPO, "nvidia-h200", datetime(2026, 12, 5))
    assert rate == pytest.approx(4.598882304 * 19293.31380035933)  # the committed H200 run's DeiT-S
    assert "results/benchmarks/nvidia-h200-paper.json, measured 2026-11-30 19:02:22 (4 days ago)" in source


def test_the_paper_plan_prints_every_stage_and_the_total(capsys: pytest.CaptureFixture[str]) -> None:
    main(["paper", "--gpu", "nvidia-h200"])
    out = capsys.readouterr().out
    assert "1,268,355 training and 50,000 test images (imagenet's published size)" in out
    assert "| prune@dynamicvit-masked-0.5 " in out and "| distill@evit-cls_tokens " in out
    assert "GPU-hours on the nvidia-h200; on its 8 GPUs" in out


def test_an_unknown_gpu_is_one_line_naming_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["smoke", "--gpu", "tpu-v5"])
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no benchmark of 'tpu-v5'" in err and "nvidia-h200" in err
