"""KD losses against values computed by hand (closed forms with math.log)."""

from __future__ import annotations

import math

import pytest
import torch

from maskprune.objectives.classification import distillation_loss, hard_kd, soft_kd


def test_soft_kd_is_kl_teacher_to_student_times_t_squared() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax -> [0.75, 0.25]
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert soft_kd(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # T = 2: teacher softmax of [ln3 / 2, 0] = [sqrt3, 1] / (sqrt3 + 1); then times T^2 = 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_t2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert soft_kd(student, teacher, 2.0).item() == pytest.approx(expected_t2, rel=1e-6)


def test_soft_kd_is_zero_for_equal_logits_and_averages_over_the_batch() -> None:
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    assert soft_kd(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    one = soft_kd(torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]), 1.0)
    two = soft_kd(torch.zeros(2, 2), torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]), 1.0)
    assert two.item() == pytest.approx(one.item() / 2, rel=1e-6)


def test_hard_kd_is_cross_entropy_on_the_teacher_argmax() -> None:
    student = torch.tensor([[2.0, 0.0, 0.0]])
    teacher = torch.tensor([[5.0, 1.0, -1.0]])
    assert hard_kd(student, teacher).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)
    assert hard_kd(student, torch.tensor([[0.0, 9.0, 0.0]])).item() == pytest.approx(
        math.log(math.exp(2) + 2) - 0.0, rel=1e-6
    )


def test_distillation_loss_mixes_cross_entropy_and_kd_with_alpha() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    labels = torch.tensor([1])
    ce = math.log(2.0)
    kd = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert distillation_loss(student, teacher, labels, 0.5, 1.0).item() == pytest.approx(0.5 * ce + 0.5 * kd)
    assert distillation_loss(student, teacher, labels, 0.0, 1.0).item() == pytest.approx(ce)
    assert distillation_loss(student, teacher, labels, 1.0, 1.0, "hard").item() == pytest.approx(ce)
    smoothed = distillation_loss(student, teacher, labels, 0.0, 1.0, label_smoothing=0.2)
    assert smoothed.item() == pytest.approx(ce)  # uniform student: smoothing does not change CE


def test_kd_gradient_flows_to_the_student_only() -> None:
    student = torch.zeros(1, 3, requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, -1.0]])
    soft_kd(student, teacher, 2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None
