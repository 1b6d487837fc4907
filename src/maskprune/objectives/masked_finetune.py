"""The masked fine-tuning objective: a student on random patch subsets, a teacher on chosen ones.

One objective covers the three finetune variants:
  - full:       student on all patches; optional KD from the teacher on the full image;
  - masked:     per batch a keep ratio from a hybrid set, random patches dropped at the input
                (Shi & Wang, arXiv 2310.17177), KD from the teacher on the full image;
  - masked_kd:  the teacher sees only k = teacher_keep x patches, chosen by the student's
                last-block [CLS] attention (MaskedKD, Son et al., ECCV 2024) or an ablation
                criterion (random, teacher attention, bottom-k).

It also keeps the cost ledger of training: the student's forward + backward FLOPs and the teacher's
forward FLOPs per image (`TeacherView`, objectives/masked_kd.py), both counted by
torch.utils.flop_counter on the calls as they actually run (once per distinct token count), times
the number of images run that way.
"""

from __future__ import annotations

from collections import Counter

import torch

from maskprune.checkpoint import unwrap
from maskprune.config import KDSection
from maskprune.masking import HybridRatios, num_kept, random_keep_idx
from maskprune.measure import train_step_flops
from maskprune.objectives.classification import distillation_loss
from maskprune.objectives.masked_kd import TeacherView


class MaskedFinetuneObjective:
    """(1 - alpha) * CE + alpha * KD for a student on a hybrid-masked input (see module doc).

    Args:
        num_patches: patches per image of the student (and teacher: same grid).
        masking: the student's keep ratio per batch.
        teacher: the teacher's view, or None for plain cross-entropy.
        kd: alpha, temperature and kind of the KD term.
        label_smoothing: of the cross-entropy term.
        world_size: processes training together (each draws the same ratios, on its own images).
    """

    def __init__(
        self,
        num_patches: int,
        masking: HybridRatios,
        teacher: TeacherView | None,
        kd: KDSection,
        label_smoothing: float = 0.0,
        world_size: int = 1,
    ) -> None:
        self.num_patches = num_patches
        self.masking = masking
        self.teacher = teacher
        self.kd = kd
        self.label_smoothing = label_smoothing
        self.student_flops_per_image: dict[int, float] = {}  # kept patches -> fwd + bwd FLOPs
        self.student_images: Counter[int] = Counter()
        self.world_size = world_size
        self.wants_attention = teacher is not None and teacher.needs_student_attention

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        keep = num_kept(self.num_patches, self.masking.sample())
        student_idx = None
        if keep < self.num_patches:
            student_idx = random_keep_idx(images.shape[0], self.num_patches, keep, device=images.device)
        if keep not in self.student_flops_per_image:
            self.student_flops_per_image[keep] = train_step_flops(
                unwrap(model),
                images[:1],
                keep_idx=None if student_idx is None else student_idx[:1],
                return_cls_attn=self.wants_attention,
            )
        self.student_images[keep] += images.shape[0]
        out = model(images, keep_idx=student_idx, return_cls_attn=self.wants_attention)
        logits, attn = out if self.wants_attention else (out, None)
        teacher_logits = self.teacher(images, student_idx, attn) if self.teacher is not None else None
        return distillation_loss(
            logits,
            teacher_logits,
            labels,
            self.kd.alpha,
            self.kd.temperature,
            self.kd.kind,
            self.label_smoothing,
        )

    def epoch_summary(self) -> dict[str, float]:
        """This epoch's training cost over all processes, then the counters restart."""
        local_images = max(sum(self.student_images.values()), 1)
        kept = sum(k * n for k, n in self.student_images.items()) / local_images / self.num_patches
        images = local_images * self.world_size
        student = _ledger(self.student_flops_per_image, self.student_images) * self.world_size
        teacher = 0.0
        if self.teacher is not None:
            teacher = _ledger(self.teacher.flops_per_image, self.teacher.images) * self.world_size
        summary = {
            "train_gflops": (student + teacher) / 1e9,
            "teacher_gflops": teacher / 1e9,
            "teacher_gmacs_per_image": teacher / 2 / 1e9 / images,
            "student_keep_mean": kept,
        }
        self.student_images.clear()
        if self.teacher is not None:
            self.teacher.images.clear()
        return summary


def _ledger(flops_per_image: dict[int, float], images: Counter[int]) -> float:
    return sum(flops_per_image[key] * count for key, count in images.items())
