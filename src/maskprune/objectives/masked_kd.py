"""MaskedKD (Son et al., ECCV 2024): the teacher runs on a fraction of the patches.

The teacher sees only k = keep_ratio x patches, chosen by the student's last-block [CLS] attention
or an ablation criterion (random, the teacher's own attention, the bottom-k of the student's).
`TeacherView` also counts the teacher's forward FLOPs per image (torch.utils.flop_counter, once
per distinct token count) and the images run that way, for the training cost ledger.
"""

from __future__ import annotations

from collections import Counter

import torch

from maskprune.config import FinetuneSection
from maskprune.masking import Criterion, num_kept, random_keep_idx, score_keep_idx
from maskprune.measure import count_flops
from maskprune.models.vit import TokenViT


class TeacherView:
    """Runs the frozen teacher on the patches `criterion` picks: eval mode, inference mode.

    Args:
        teacher: the teacher, already on the device; it is put in eval mode and frozen.
        keep_ratio: fraction of patches the teacher sees (1.0 = the full image).
        criterion: how the patches are chosen when `keep_ratio` < 1.
    """

    def __init__(self, teacher: TokenViT, keep_ratio: float = 1.0, criterion: Criterion = "student_attn") -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.num_patches = teacher.num_patches
        self.keep = num_kept(self.num_patches, keep_ratio)
        self.criterion = criterion
        self.flops_per_image: dict[int, float] = {}  # teacher tokens -> forward FLOPs per image
        self.images: Counter[int] = Counter()

    @property
    def needs_student_attention(self) -> bool:
        return self.keep < self.num_patches and self.criterion in ("student_attn", "bottom_k")

    def select(
        self, images: torch.Tensor, student_idx: torch.Tensor | None, student_attn: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Patch indices `[batch, k]` for the teacher, or None for the full image.

        With a masked student, the teacher chooses among the patches the student kept
        (`student_idx` `[batch, kept]`, `student_attn` `[batch, kept]` in the same order).
        """
        if self.keep >= self.num_patches:
            return None
        available = self.num_patches if student_idx is None else student_idx.shape[1]
        k = self.tokens_for(student_idx)
        if self.criterion == "random":
            pos = random_keep_idx(images.shape[0], available, k, device=images.device)
        elif self.criterion == "teacher_attn":
            scores = self.teacher.forward_tokens(images, cls_attn_blocks=(-1,)).cls_attn[len(self.teacher.blocks) - 1]
            if student_idx is not None:
                scores = scores.gather(1, student_idx)
            pos = score_keep_idx(scores, k)
        else:
            if student_attn is None:
                raise ValueError(f"criterion {self.criterion!r} needs the student's attention row")
            pos = score_keep_idx(student_attn.detach().float(), k, largest=self.criterion == "student_attn")
        return pos if student_idx is None else student_idx.gather(1, pos)

    def __call__(
        self,
        images: torch.Tensor,
        student_idx: torch.Tensor | None = None,
        student_attn: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher logits `[batch, classes]` as a plain tensor (usable as a loss target)."""

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return self.teacher(images, keep_idx=self.select(images, student_idx, student_attn))

        tokens = self.tokens_for(student_idx)
        if tokens not in self.flops_per_image:
            logits: list[torch.Tensor] = []
            flops = count_flops(lambda: logits.append(run()))
            self.flops_per_image[tokens] = flops / images.shape[0]
        else:
            logits = [run()]
        self.images[tokens] += images.shape[0]
        return logits[0].clone()  # NOTE: inference tensors cannot be saved for backward

    def tokens_for(self, student_idx: torch.Tensor | None) -> int:
        """Patch tokens the teacher's main forward runs on."""
        if self.keep >= self.num_patches:
            return self.num_patches
        return min(self.keep, self.num_patches if student_idx is None else student_idx.shape[1])


def teacher_view(cfg: FinetuneSection, variant: str, teacher: TokenViT | None) -> TeacherView | None:
    """The patches the arm's teacher sees: all of them, MaskedKD's choice, or as many at random."""
    if teacher is None:
        return None
    if variant == "masked_kd":
        return TeacherView(teacher, cfg.masked_kd.teacher_keep, cfg.masked_kd.criterion)
    if variant == "random_kd":
        return TeacherView(teacher, cfg.masked_kd.teacher_keep, "random")
    return TeacherView(teacher)
