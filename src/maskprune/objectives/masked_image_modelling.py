"""The pre-training objective: masked image modelling (MAE or SimMIM), optionally with MTO.

Per batch a fresh random mask (the same ratio for every image, argsort of noise), the MIM loss on
the masked patches, and MTO's three terms on the layers that carry mask tokens:

    loss = L_rec + spa_weight * L_spa + e_weight * L_e + r_weight * L_r

Without MTO (the baseline) the terms and the per-layer heterogeneity H_l are still measured (under
no_grad), so the two runs' curves compare directly. `epoch_summary` reports each term and every
H_l averaged over the epoch's steps and over all processes.
"""

from __future__ import annotations

import torch

from maskprune.config import MTOSection
from maskprune.masking import num_kept, random_keep_idx
from maskprune.models.mim_heads import masked_indices, mim_loss
from maskprune.objectives.mto import RankDirection, embedding_loss, heterogeneity, rank_loss, spatial_loss
from maskprune.runtime import Runtime, all_reduce_sum

TERMS = ("rec_loss", "mto_spa", "mto_e", "mto_r")


def mto_terms(
    layers: list[torch.Tensor],
    masked_idx: torch.Tensor,
    visible_idx: torch.Tensor,
    eps: float,
    rank_direction: RankDirection = "falling",
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """MTO's losses and the per-layer heterogeneity of the mask-carrying `layers` `[batch, patches, c]`."""
    h = [heterogeneity(tokens, masked_idx, visible_idx) for tokens in layers]
    terms = {
        "mto_spa": spatial_loss(layers[0], visible_idx),
        "mto_e": embedding_loss(h[0], eps),
        "mto_r": rank_loss(h, rank_direction),
    }
    return terms, h


class MIMObjective:
    """MIM loss (+ MTO) for a `MAE` or `SimMIM` module (see module doc).

    Args:
        objective: "mae" or "simmim".
        mask_ratio: fraction of patches masked.
        num_patches / patch_size: the encoder's patch grid.
        norm_pix: MAE's per-patch normalised targets.
        mto: MTO's weights and eps (eps is used to measure L_e in the baseline too).
        train_mto: add the weighted MTO terms to the loss (False: the baseline).
        runtime: for averaging the epoch summary over processes.
    """

    def __init__(
        self,
        objective: str,
        mask_ratio: float,
        num_patches: int,
        patch_size: int,
        norm_pix: bool,
        mto: MTOSection,
        train_mto: bool,
        runtime: Runtime,
    ) -> None:
        self.objective = objective
        self.num_patches = num_patches
        self.visible = num_kept(num_patches, 1.0 - mask_ratio)
        self.patch_size = patch_size
        self.norm_pix = norm_pix
        self.mto = mto
        self.train_mto = train_mto
        self.runtime = runtime
        self._sums: torch.Tensor | None = None
        self._steps = 0

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        keep_idx = random_keep_idx(images.shape[0], self.num_patches, self.visible, device=images.device)
        masked_idx = masked_indices(keep_idx, self.num_patches)
        out = model(images, keep_idx)
        masked = torch.zeros(images.shape[0], self.num_patches, dtype=torch.bool, device=images.device)
        masked.scatter_(1, masked_idx, True)
        rec = mim_loss(self.objective, out.pred, images, self.patch_size, masked, self.norm_pix)
        with torch.set_grad_enabled(self.train_mto and torch.is_grad_enabled()):
            terms, h = mto_terms(out.layers, masked_idx, keep_idx, self.mto.eps, self.mto.rank_direction)
        loss = rec
        if self.train_mto:
            loss = loss + self.mto.spa_weight * terms["mto_spa"] + self.mto.e_weight * terms["mto_e"]
            loss = loss + self.mto.r_weight * terms["mto_r"]
        values = torch.stack([rec, *(terms[k] for k in TERMS[1:]), *h]).detach().double()
        self._sums = values if self._sums is None else self._sums + values
        self._steps += 1
        return loss

    def epoch_summary(self) -> dict[str, float]:
        """Each term and H_0..H_L averaged over this epoch's steps and processes; then a fresh count."""
        if self._sums is None:
            return {}
        sums = all_reduce_sum(self._sums, self.runtime) / (self._steps * self.runtime.world_size)
        values = sums.tolist()
        summary = dict(zip(TERMS, values[: len(TERMS)], strict=True))
        summary.update({f"h_{i}": v for i, v in enumerate(values[len(TERMS) :])})
        self._sums, self._steps = None, 0
        return summary
