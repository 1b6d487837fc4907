"""Task-agnostic feature distillation (seed 002): a teacher's token features, no labels.

The student's final (normed) tokens are projected to the teacher's width and matched to the
teacher's final tokens on the full image:
  - target `cls`:        the [CLS] token only;
  - target `cls_tokens`: [CLS] plus every patch token the student still holds, matched to the
    teacher's token at the same input patch (an EViT student's fused token has no such
    counterpart and is left out, as in EViT's own distillation code).
Loss per token: MSE, or 1 - cosine similarity; the patch term is averaged over kept tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from maskprune.models.vit import TokenViT

Target = Literal["cls", "cls_tokens"]
FeatureLoss = Literal["mse", "cosine"]


def token_loss(student: torch.Tensor, teacher: torch.Tensor, kind: FeatureLoss) -> torch.Tensor:
    """Per-token loss `[...]` between `[..., channels]` features."""
    if kind == "mse":
        return (student.float() - teacher.float()).pow(2).mean(dim=-1)
    return 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)


def feature_distillation_loss(
    student_tokens: torch.Tensor,
    patch_idx: torch.Tensor,
    teacher_tokens: torch.Tensor,
    target: Target,
    kind: FeatureLoss,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Loss of projected student tokens `[batch, prefix + t, c]` against the teacher's `[batch, prefix + n, c]`.

    `patch_idx` `[batch, t]` gives the input patch of each student token (-1 = fused, skipped).
    """
    loss = token_loss(student_tokens[:, 0], teacher_tokens[:, 0], kind).mean()
    if target == "cls_tokens":
        real = patch_idx >= 0
        index = patch_idx.clamp_min(0).unsqueeze(-1).expand(-1, -1, teacher_tokens.shape[-1])
        matched = teacher_tokens[:, num_prefix_tokens:].gather(1, index)
        per_token = token_loss(student_tokens[:, num_prefix_tokens:], matched, kind)
        loss = loss + (per_token * real).sum() / real.sum().clamp_min(1)
    return loss


class ProjectedStudent(nn.Module):
    """The student backbone and a linear projection to the teacher's width, trained together.

    `forward` returns the projected tokens `[batch, prefix + t, teacher channels]` and their patch
    indices `[batch, t]`, through the module call so that DDP sees every parameter.
    """

    def __init__(self, backbone: TokenViT, teacher_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Linear(backbone.embed_dim, teacher_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone.forward_tokens(images)
        return self.projection(out.tokens), out.patch_idx


class FeatureKDObjective:
    """The label-free objective: the frozen teacher's tokens as targets (labels are ignored)."""

    def __init__(self, teacher: TokenViT, target: Target, kind: FeatureLoss) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.target = target
        self.kind = kind

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tokens, patch_idx = model(images)
        with torch.inference_mode():
            teacher_tokens = self.teacher.forward_features(images)
        return feature_distillation_loss(
            tokens, patch_idx, teacher_tokens.clone(), self.target, self.kind, self.teacher.num_prefix_tokens
        )
