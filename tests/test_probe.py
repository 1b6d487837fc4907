"""Linear probing on frozen features (maskprune.probe)."""

from __future__ import annotations

import torch

from maskprune.config import ProbeSection
from maskprune.probe import fit_linear_probe


def test_linear_probe_separates_separable_features_and_works_on_raw_features() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    features = torch.randn(300, 8, generator=gen) * 0.1 + 100.0  # far from standardised
    features[torch.arange(300), labels] += 1.0
    layer = fit_linear_probe(
        features, labels, 3, ProbeSection(epochs=40, batch_size=64, lr=0.05, weight_decay=0.0), seed=0
    )
    assert (layer(features).argmax(dim=1) == labels).float().mean().item() > 0.95
