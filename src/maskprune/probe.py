"""Linear probing: a linear classifier on a frozen backbone's [CLS] features.

Features are standardised with the training set's mean and standard deviation while the probe
trains; the standardisation is then folded into the linear layer, so the returned layer works on
raw features and can serve as the model's head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskprune.config import ProbeSection
from maskprune.data.loader import Normalizer, Split, eval_batches
from maskprune.runtime import Runtime


@torch.inference_mode()
def cls_features(model: torch.nn.Module, split: Split, normalizer: Normalizer, runtime: Runtime,
                 batch_size: int) -> torch.Tensor:  # fmt: skip
    """`[n, channels]` pre-logit features (the normed [CLS] token) of every image in `split`."""
    was_training = model.training
    model.eval()
    parts = []
    for idx in eval_batches(len(split), batch_size):
        images = normalizer(split.images[idx.to(split.images.device)].to(runtime.device))
        with runtime.autocast():
            parts.append(model.forward_head(model.forward_features(images), pre_logits=True).float())
    model.train(was_training)
    return torch.cat(parts)


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProbeSection,
                     seed: int) -> torch.nn.Linear:  # fmt: skip
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
