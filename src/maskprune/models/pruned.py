"""Token-pruned models: which method, where it prunes and how much, as saved in checkpoints.

A pruned model is a TokenViT turned into an EViT or a DynamicViT; `PruningSpec` is everything
needed to turn a freshly built TokenViT into the same pruned model again (checkpoint meta.json).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from maskprune.config import PRUNING_METHODS as METHODS
from maskprune.config import PruningMethod
from maskprune.errors import MaskpruneError
from maskprune.models.dynamicvit import make_dynamicvit
from maskprune.models.evit import make_evit
from maskprune.models.vit import TokenViT


def pruning_blocks(depth: int, locations: Sequence[int] = ()) -> tuple[int, ...]:
    """0-indexed pruning blocks: `locations`, or by default those at 1/4, 1/2, 3/4 of the depth.

    The default is (3, 6, 9) for 12 blocks as in both papers, (1, 3, 4) for 6.
    """
    if not locations:
        return tuple(sorted({depth * quarter // 4 for quarter in (1, 2, 3)}))
    bad = [b for b in locations if not 0 <= b < depth]
    if bad:
        raise MaskpruneError(
            f"prune.locations {list(locations)}: block(s) {bad} lie beyond the model's "
            f"{depth} blocks (0 to {depth - 1}); fix them or give [] for the default"
        )
    if list(locations) != sorted(set(locations)):
        raise MaskpruneError(f"prune.locations {list(locations)} must be strictly increasing block indices")
    return tuple(locations)


def check_keeps_a_patch(keep_rate: float, num_patches: int, stages: int) -> None:
    """A ValueError unless `keep_rate` leaves at least one whole patch after each of `stages` pruning blocks.

    DynamicViT keeps `num_patches * keep_rate**s` after its s-th pruning block (floored); EViT rounds up,
    so keeps at least as many. Below one patch both would keep one anyway, and the model would not be
    pruned at the rate its name and meta.json give.
    """
    left = num_patches * keep_rate**stages
    if left < 1 - 1e-9:
        lowest = math.ceil(num_patches ** (-1 / stages) * 1000) / 1000
        raise ValueError(
            f"keep rate {keep_rate} leaves {left:.3g} of the student's {num_patches} patches after its {stages} "
            f"pruning blocks, where at least one must remain; use a keep rate of at least {lowest}"
        )


@dataclass(frozen=True)
class PruningSpec:
    method: PruningMethod
    keep_rate: float
    blocks: tuple[int, ...]
    fuse_token: bool = True  # EViT only

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise MaskpruneError(f"unknown pruning method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0.0 < self.keep_rate <= 1.0:
            raise MaskpruneError(f"keep rate {self.keep_rate} must lie in (0, 1]")

    def to_meta(self) -> dict[str, Any]:
        return {**asdict(self), "blocks": list(self.blocks)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> PruningSpec:
        return cls(**{**meta, "blocks": tuple(meta["blocks"])})


def make_pruned(model: TokenViT, spec: PruningSpec) -> TokenViT:
    """Turn `model` into the pruned model `spec` describes (in place; backbone weights kept)."""
    blocks = pruning_blocks(len(model.blocks), spec.blocks)
    if spec.method == "evit":
        return make_evit(model, blocks, spec.keep_rate, spec.fuse_token)
    return make_dynamicvit(model, blocks, spec.keep_rate)
