"""Classification losses: cross-entropy, and knowledge distillation (DeiT / MaskedKD convention).

loss = (1 - alpha) * CE(student, labels) + alpha * KD(student, teacher)
soft KD = KL(softmax(t / T) || softmax(s / T)) * T^2     (batch mean)
hard KD = CE(student, argmax teacher)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

KDKind = Literal["soft", "hard"]


def soft_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened `[batch, classes]` logits, times T^2."""
    t = temperature
    log_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * (t * t)


def hard_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's predicted class."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=-1))


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
    kind: KDKind = "soft",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(1 - alpha) * CE(labels, label smoothing) + alpha * KD; plain CE without a teacher."""
    base = F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    if teacher_logits is None:
        return base
    kd = (
        soft_kd(student_logits, teacher_logits, temperature)
        if kind == "soft"
        else hard_kd(student_logits, teacher_logits)
    )
    return (1.0 - alpha) * base + alpha * kd


@dataclass(frozen=True)
class ClassificationObjective:
    """Cross-entropy with label smoothing on the model's logits."""

    label_smoothing: float = 0.0

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images), labels, label_smoothing=self.label_smoothing)
