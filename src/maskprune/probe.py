"""Linear probing: a linear classifier on a frozen backbone's pooled features.

Features are the final (normed) [CLS] token, the mean of the final patch tokens, or every patch
token side by side (what `TokenViT.pool` feeds the head with `global_pool` 'token', 'avg' or
'flat', so the probe can become the model's head in each case). They are
standardised with the training set's mean and standard deviation while the probe
trains; the standardisation is then folded into the linear layer, so the returned layer works on
raw features and can serve as the model's head.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from maskprune.config import PretrainProbe, ProbeSection
from maskprune.data.loader import Normalizer
from maskprune.data.storage import PreparedData, Split
from maskprune.models.vit import FLAT_POOL, TokenViT
from maskprune.runtime import Runtime

Pool = Literal["cls", "mean", "tokens"]
TIMM_POOL: dict[str, str] = {
    "cls": "token",
    "mean": "avg",
    "tokens": FLAT_POOL,
}  # the `global_pool` that feeds a head the same (TokenViT.pool)


@torch.inference_mode()
def pooled_features(
    model: TokenViT,
    split: Split,
    normalizer: Normalizer,
    runtime: Runtime,
    batch_size: int,
    pool: Pool = "cls",
) -> torch.Tensor:
    """`[n, features]` of every image in `split`: the final [CLS] token, mean patch token or all patch tokens."""
    was_training = model.training
    model.eval()
    parts = []
    for _, images, _ in split.batches(batch_size, runtime.device, crop_pct=normalizer.crop_pct):
        images = normalizer(images)
        with runtime.autocast(inference=True):
            tokens = model.forward_features(images)
        pooled = model.pool(tokens, TIMM_POOL[pool])
        parts.append(pooled.float())
    model.train(was_training)
    return torch.cat(parts)


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProbeSection, seed: int
) -> torch.nn.Linear:
    """A linear layer `[channels] -> [classes]` trained with cross-entropy on fixed features."""
    mean, std = features.mean(dim=0), features.std(dim=0).clamp_min(1e-6)
    inputs = (features - mean) / std
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(features.shape[1], num_classes).to(features.device)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(inputs) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    with torch.enable_grad():
        for _ in range(cfg.epochs):
            for idx in torch.randperm(len(inputs), generator=gen).to(inputs.device).split(cfg.batch_size):
                loss = F.cross_entropy(layer(inputs[idx]), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
    with torch.no_grad():  # fold the standardisation in: W ((x - m) / s) + b = (W / s) x + (b - W m / s)
        weight = layer.weight / std
        layer.bias -= weight @ mean
        layer.weight.copy_(weight)
    return layer


@torch.no_grad()
def pixel_floor(
    train: Split,
    test: Split,
    normalizer: Normalizer,
    cfg: ProbeSection,
    seed: int,
    num_classes: int,
) -> float:
    """Test top-1 of the same linear probe fitted on the normalised raw pixels instead of features.

    The floor a learned representation must clear before its probe says anything about it.

    Args:
        train: the probe's training images `[n, channels, height, width]` and labels.
        test: the images it is scored on.
    """
    layer = fit_linear_probe(pixel_features(train, normalizer), train.labels, num_classes, cfg, seed)
    return probe_top1(layer, pixel_features(test, normalizer), test.labels)


def pixel_features(split: Split, normalizer: Normalizer, batch_size: int = 1024) -> torch.Tensor:
    """`[n, channels * size * size]`: the normalised pixels of every image in `split`, batch by batch."""
    device = normalizer.mean.device
    batches = split.batches(batch_size, device, crop_pct=normalizer.crop_pct)
    return torch.cat([normalizer(images).flatten(1).float() for _, images, _ in batches])


@torch.no_grad()
def probe_top1(layer: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 of a probe on precomputed features `[n, channels]`."""
    return (layer(features).argmax(dim=-1) == labels).float().mean().item()


class LinearProbe:
    """Fits a linear probe on a frozen encoder's pooled features and scores it: as `epoch_end` of pre-training
    (after every epoch), and on a randomly initialised encoder (claim D's second floor)."""

    def __init__(
        self, cfg: PretrainProbe, seed: int, normalize: Normalizer, data: PreparedData, runtime: Runtime
    ) -> None:
        self.cfg, self.seed, self.runtime = cfg, seed, runtime
        self.train = data.splits["train"].subset(cfg.train_limit, seed).to(runtime.device)
        self.test = data.splits["test"].subset(cfg.test_limit, seed).to(runtime.device)
        self.normalize = normalize
        self.num_classes = data.num_classes
        self.head: torch.nn.Linear | None = None

    def fit_and_score(self, encoder: TokenViT) -> float:
        batch = max(256, self.cfg.batch_size)
        train = pooled_features(encoder, self.train, self.normalize, self.runtime, batch, self.cfg.pool)
        test = pooled_features(encoder, self.test, self.normalize, self.runtime, batch, self.cfg.pool)
        self.head = fit_linear_probe(train, self.train.labels, self.num_classes, self.cfg, self.seed)
        return probe_top1(self.head, test, self.test.labels)

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        return {"probe_top1": self.fit_and_score(model.encoder)}
