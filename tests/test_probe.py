"""Linear probing on frozen features (maskprune.probe)."""

from __future__ import annotations

from pathlib import Path

import torch

from maskprune.checkpoint import load_model, save_model
from maskprune.config import ProbeSection
from maskprune.data.loader import Normalizer
from maskprune.data.storage import MemorySplit
from maskprune.models.vit import build_model
from maskprune.probe import TIMM_POOL, fit_linear_probe, pooled_features
from maskprune.runtime import Runtime
from tests.conftest import checkpoint_meta, cpu_params, updated


def test_linear_probe_separates_separable_features_and_works_on_raw_features() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    features = torch.randn(300, 8, generator=gen) * 0.1 + 100.0  # far from standardised
    features[torch.arange(300), labels] += 1.0
    layer = fit_linear_probe(
        features, labels, 3, ProbeSection(epochs=40, batch_size=64, lr=0.05, weight_decay=0.0), seed=0
    )
    assert (layer(features).argmax(dim=1) == labels).float().mean().item() > 0.95


def test_flat_probe_features_are_the_patch_tokens_side_by_side_and_serve_as_the_head(tmp_path: Path) -> None:
    spec = updated(cpu_params().models.student, patch_size=7)  # 16 patches of 128 channels, [CLS] first
    torch.manual_seed(0)
    model = build_model(spec, num_classes=10, in_chans=1).eval()
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    normalize = Normalizer([0.5], [0.25], 28, torch.device("cpu"))
    runtime = Runtime(device=torch.device("cpu"), amp_dtype=None, compile=False, progress=False)
    features = pooled_features(
        model, MemorySplit(images, torch.zeros(5, dtype=torch.long)), normalize, runtime, 2, "tokens"
    )
    features = features.clone()  # out of inference mode
    with torch.no_grad():
        tokens = model.forward_features(normalize(images))
    torch.testing.assert_close(features, tokens[:, 1:].reshape(5, 16 * 128))
    torch.testing.assert_close(features[:, 128:256], tokens[:, 2])  # patch 1's channels come second
    model.set_pool(TIMM_POOL["tokens"], 10)
    model.head = head = torch.nn.Linear(16 * 128, 10).requires_grad_(False)
    with torch.no_grad():
        torch.testing.assert_close(model(normalize(images)), head(features))
    save_model(tmp_path, model, checkpoint_meta(spec, global_pool=model.global_pool))
    loaded, _ = load_model(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(normalize(images)), head(features))  # the head's width comes back
