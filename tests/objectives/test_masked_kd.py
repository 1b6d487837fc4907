"""MaskedKD's teacher view: which patches the teacher sees, its own forward, and its GMACs."""

from __future__ import annotations

import pytest
import torch

from maskprune.measure import gmacs
from maskprune.models.vit import PRESETS, TokenViT
from maskprune.objectives.masked_kd import TeacherView
from tests.objectives.teacher_student import GRID, Seen, batch, tiny


def test_teacher_picks_top_k_of_student_attention_among_kept_patches() -> None:
    view = TeacherView(tiny(48, 3), keep_ratio=0.25, criterion="student_attn")  # k = 12 of 49
    images, _ = batch(2)
    attn = torch.zeros(2, 49)
    attn[0, [3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 43, 47]] = torch.linspace(0.1, 0.9, 12)
    attn[1, 30:42] = 1.0
    assert view.select(images, None, attn).tolist() == [
        [3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 43, 47],
        list(range(30, 42)),
    ]
    student_idx = torch.tensor([[2, 5, 7, 9, 11, 13, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 41, 43, 45]] * 2)
    row = torch.arange(20, dtype=torch.float32)  # attention grows with position: top 12 are the last 12
    picked = view.select(images, student_idx, torch.stack([row, row.flip(0)]))
    assert picked[0].tolist() == student_idx[0, 8:].tolist()
    assert picked[1].tolist() == student_idx[1, :12].tolist()
    bottom = TeacherView(view.teacher, 0.25, "bottom_k").select(images, None, attn)
    assert not set(bottom[1].tolist()) & set(range(30, 42))


def test_teacher_attention_criterion_uses_the_teachers_own_full_forward() -> None:
    torch.manual_seed(0)
    teacher = tiny(48, 3)
    seen = Seen(teacher)
    view = TeacherView(teacher, 0.5, "teacher_attn")
    images, _ = batch(3)
    logits = view(images)
    assert seen.tokens == [50, 25]  # full pass for the attention row, then [CLS] + 24 patches
    scores = teacher.forward_tokens(images, cls_attn_blocks=(-1,)).cls_attn[1]
    expected = teacher(images, keep_idx=scores.topk(24, dim=1).indices.sort(dim=1).values)
    torch.testing.assert_close(logits, expected)


def test_student_attention_row_from_forward_matches_forward_tokens() -> None:
    torch.manual_seed(0)
    model = tiny().eval()
    images, _ = batch(2)
    keep = torch.tensor([[0, 4, 9, 30], [1, 2, 3, 48]])
    logits, attn = model(images, keep_idx=keep, return_cls_attn=True)
    out = model.forward_tokens(images, keep, cls_attn_blocks=(1,))
    torch.testing.assert_close(attn, out.cls_attn[1])
    torch.testing.assert_close(logits, model(images, keep_idx=keep))
    assert attn.shape == (2, 4)


def test_teacher_gmacs_at_half_keep_are_about_half_of_full() -> None:
    teacher = TokenViT(**GRID, **PRESETS["vit_teacher"])
    images, _ = batch(4)
    half, full = TeacherView(teacher, 0.5), TeacherView(teacher, 1.0)
    half(images, student_attn=torch.rand(4, 49))
    full(images)
    ratio = half.flops_per_image[24] / full.flops_per_image[49]
    assert 0.45 <= ratio <= 0.55  # within 10% of one half
    assert full.flops_per_image[49] / 2 / 1e9 == pytest.approx(gmacs(teacher, images[:1]), rel=1e-6)
