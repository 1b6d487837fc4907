"""Training objectives of the token-pruning methods.

- EViT: (1 - alpha) * CE + alpha * KD from the teacher, with the keep rate warmed from 1.0 to
  its target on a cosine schedule (Liang et al.).
- DynamicViT: CE + ratio_weight * kept-ratio MSE + kd_weight * KL(teacher || student)
  + token_weight * MSE of the kept final tokens against the unpruned model (Rao et al.).
  NOTE: the paper's code takes both targets from the unpruned model; here the logits come from
  the same teacher that every other stage distils from, so EViT and DynamicViT see one teacher,
  and the token target from the unpruned init (the only model with the student's width).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from maskprune.config import DynamicViTSection, KDSection
from maskprune.models.evit import EViT
from maskprune.models.vit import TokenViT
from maskprune.objectives.classification import distillation_loss, soft_kd
from maskprune.objectives.masked_kd import TeacherView


def keep_rate_warmup(target: float, epochs_done: float, warmup_epochs: float) -> float:
    """EViT's schedule: cosine from 1.0 down to `target` over `warmup_epochs`, then `target`."""
    if epochs_done >= warmup_epochs:
        return target
    return target + (1.0 - target) * (math.cos(math.pi * epochs_done / warmup_epochs) + 1.0) / 2.0


def kept_ratio_loss(decisions: list[torch.Tensor], keep_rate: float) -> torch.Tensor:
    """Mean over stages s of mean_batch (kept fraction - keep_rate^s)^2; decisions `[batch, patches]`."""
    terms = [((d.float().mean(dim=1) - keep_rate ** (s + 1)) ** 2).mean() for s, d in enumerate(decisions)]
    return torch.stack(terms).mean()


def kept_token_mse(tokens: torch.Tensor, target: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """MSE between `[batch, patches, c]` tokens and targets over the tokens `policy` `[batch, patches, 1]` keeps."""
    kept = policy.squeeze(-1) > 0.5
    if not kept.any():
        return tokens.new_zeros(())
    return F.mse_loss(tokens[kept].float(), target[kept].float())


class EViTObjective:
    """EViT's training loss; sets the model's warm-up keep rate before every step."""

    def __init__(
        self,
        model: EViT,
        teacher: TeacherView | None,
        kd: KDSection,
        label_smoothing: float,
        keep_warmup_epochs: float,
    ) -> None:
        self.model = model
        self.teacher = teacher
        self.kd = kd
        self.label_smoothing = label_smoothing
        self.keep_warmup_epochs = keep_warmup_epochs

    def set_progress(self, epochs: float) -> None:
        self.model.train_keep_rate = keep_rate_warmup(self.model.keep_rate, epochs, self.keep_warmup_epochs)

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model(images)
        teacher_logits = self.teacher(images) if self.teacher is not None else None
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
        rate = self.model.train_keep_rate
        return {"keep_rate": self.model.keep_rate if rate is None else rate}


class DynamicViTObjective:
    """DynamicViT's training loss (see module doc); `reference` is the frozen unpruned model."""

    def __init__(
        self,
        keep_rate: float,
        teacher: TeacherView | None,
        reference: TokenViT | None,
        cfg: DynamicViTSection,
        temperature: float,
        label_smoothing: float,
    ) -> None:
        self.keep_rate = keep_rate
        self.teacher = teacher
        self.reference = reference.eval().requires_grad_(False) if reference is not None else None
        self.cfg = cfg
        self.temperature = temperature
        self.label_smoothing = label_smoothing
        self._kept_sum: torch.Tensor | float = 0.0
        self._steps = 0
        self._stages = 0

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, tokens, policy, decisions = model(images, return_policy=True)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        loss = loss + self.cfg.ratio_weight * kept_ratio_loss(decisions, self.keep_rate)
        if self.teacher is not None and self.cfg.kd_weight:
            loss = loss + self.cfg.kd_weight * soft_kd(logits, self.teacher(images), self.temperature)
        if self.reference is not None and self.cfg.token_weight:
            with torch.inference_mode():
                target = self.reference.forward_features(images)[:, self.reference.num_prefix_tokens :]
            loss = loss + self.cfg.token_weight * kept_token_mse(tokens, target.clone(), policy)
        self._kept_sum = self._kept_sum + decisions[-1].detach().float().mean()
        self._steps += 1
        self._stages = len(decisions)
        return loss

    def epoch_summary(self) -> dict[str, float]:
        """The mean fraction of patches the last stage kept during training and its target
        (keep_rate^stages), then a fresh count."""
        kept = float(self._kept_sum) / max(self._steps, 1)
        self._kept_sum, self._steps = 0.0, 0
        return {"train_kept_fraction": kept, "train_kept_target": self.keep_rate**self._stages}
