"""The masked fine-tuning objective: the student's kept tokens, the loss, and the cost ledger."""

from __future__ import annotations

import pytest
import torch

from maskprune.config import KDSection
from maskprune.masking import HybridRatios
from maskprune.measure import gmacs, train_step_flops
from maskprune.objectives.classification import distillation_loss
from maskprune.objectives.masked_finetune import MaskedFinetuneObjective
from maskprune.objectives.masked_kd import TeacherView
from tests.conftest import cpu_params
from tests.objectives.teacher_student import Seen, batch, tiny

KD = cpu_params().finetune.kd  # alpha 0.5, temperature 1, soft labels


@pytest.mark.parametrize("ratio, tokens", [(1.0, 50), (0.75, 37), (0.5, 25), (0.25, 13)])
def test_masked_student_runs_on_cls_plus_exact_patch_count(ratio: float, tokens: int) -> None:
    torch.manual_seed(0)
    student, teacher = tiny(), tiny(48, 3)
    seen_s, seen_t = Seen(student), Seen(teacher)
    objective = MaskedFinetuneObjective(49, HybridRatios([ratio], [1.0]), TeacherView(teacher), KD)
    images, labels = batch()
    objective(student, images, labels).backward()
    assert seen_s.tokens[-1] == tokens  # the measured copy and the real forward see the same count
    assert seen_t.tokens == [50]  # `masked`: the teacher sees the full image
    assert seen_t.inference == [True] and seen_t.training == [False]
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_masked_kd_loss_equals_the_formula_on_the_selected_teacher_view() -> None:
    torch.manual_seed(0)
    student, teacher = tiny().eval(), tiny(48, 3)
    kd = KDSection(alpha=0.3, temperature=2.0, kind="soft")
    objective = MaskedFinetuneObjective(49, HybridRatios([1.0], [1.0]), TeacherView(teacher, 0.5), kd, 0.1)
    images, labels = batch()
    loss = objective(student, images, labels)
    logits, attn = student(images, return_cls_attn=True)
    with torch.no_grad():
        teacher_logits = teacher(images, keep_idx=attn.topk(24, dim=1).indices.sort(dim=1).values)
    torch.testing.assert_close(loss, distillation_loss(logits, teacher_logits, labels, 0.3, 2.0, "soft", 0.1))


def test_cost_ledger_adds_measured_flops_times_images_and_restarts_each_epoch() -> None:
    torch.manual_seed(0)
    student, teacher = tiny(), tiny(48, 3)
    objective = MaskedFinetuneObjective(
        49,
        HybridRatios([1.0, 0.5], [0.5, 0.5]),
        TeacherView(teacher, 0.25, "random"),
        KD,
        world_size=2,
    )
    images, labels = batch(4)
    for _ in range(6):
        objective(student, images, labels)
    counts = dict(objective.student_images)
    assert sum(counts.values()) == 24 and set(counts) <= {49, 24}
    full_step = train_step_flops(student, images[:1])
    assert objective.student_flops_per_image[49] == pytest.approx(full_step, rel=1e-6)
    assert 2.9 < full_step / (2e9 * gmacs(student, images[:1])) < 3.2  # backward ~ 2x forward
    teacher_per_image = objective.teacher.flops_per_image[12]
    student_total = sum(objective.student_flops_per_image[k] * n for k, n in counts.items())
    summary = objective.epoch_summary()
    assert summary["teacher_gflops"] == pytest.approx(2 * 24 * teacher_per_image / 1e9)
    assert summary["train_gflops"] == pytest.approx(2 * (student_total + 24 * teacher_per_image) / 1e9)
    assert summary["teacher_gmacs_per_image"] == pytest.approx(teacher_per_image / 2 / 1e9)
    assert summary["student_keep_mean"] == pytest.approx(sum(k * n for k, n in counts.items()) / 24 / 49)
    assert objective.epoch_summary()["train_gflops"] == 0.0


def test_plain_cross_entropy_without_teacher() -> None:
    torch.manual_seed(0)
    student = tiny()
    objective = MaskedFinetuneObjective(49, HybridRatios([1.0], [1.0]), None, KD, 0.0)
    images, labels = batch()
    student.eval()
    loss = objective(student, images, labels)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(student(images), labels))
    assert objective.epoch_summary()["teacher_gflops"] == 0.0
