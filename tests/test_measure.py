"""Measurements: token counts, top-1, occlusion, throughput fields, paired throughput's wiring."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from maskprune import measure
from maskprune.aa_control import aa_noisy
from maskprune.data.loader import Normalizer
from maskprune.data.storage import MemorySplit
from maskprune.measure import occlusion_curve, paired_throughput, throughput, top1
from maskprune.models.vit import TokenViT
from maskprune.runtime import Runtime

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, compile=False, progress=False)


class Constant(torch.nn.Module):
    """Predicts class = number of kept tokens modulo 3 (to see keep_idx arrive)."""

    def forward(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        kept = 4 if keep_idx is None else keep_idx.shape[1]
        return torch.nn.functional.one_hot(torch.full((len(x),), kept % 3), 3).float()


def test_top1_and_occlusion_with_a_hand_made_model() -> None:
    split = MemorySplit(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.tensor([1] * 7 + [0] * 3))
    norm = Normalizer([0.0], [1.0], 4, torch.device("cpu"))
    assert top1(Constant(), split, norm, CPU, batch_size=3) == pytest.approx(0.7)
    rows = occlusion_curve(Constant(), split, norm, CPU, 4, [0.0, 0.5, 0.75], num_patches=4, seed=0)
    assert [r["kept_patches"] for r in rows] == [4, 2, 1]
    assert [r["top1"] for r in rows] == [pytest.approx(0.7), pytest.approx(0.0), pytest.approx(0.7)]


def test_occlusion_is_independent_of_batch_size() -> None:
    torch.manual_seed(0)
    model = TokenViT(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=2)
    split = MemorySplit(torch.randint(0, 255, (20, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (20,)))
    norm = Normalizer([0.5], [0.5], 8, torch.device("cpu"))
    a = occlusion_curve(model, split, norm, CPU, 3, [0.0, 0.5], 16, seed=1)
    b = occlusion_curve(model, split, norm, CPU, 20, [0.0, 0.5], 16, seed=1)
    assert a == b


def test_a_known_clean_top1_is_the_unoccluded_point_without_another_pass() -> None:
    torch.manual_seed(0)
    model = TokenViT(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=2)
    split = MemorySplit(torch.randint(0, 255, (20, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (20,)))
    norm = Normalizer([0.5], [0.5], 8, torch.device("cpu"))
    passes = []
    model.register_forward_hook(lambda _, args, kwargs, out: passes.append(kwargs.get("keep_idx")), with_kwargs=True)
    measured = occlusion_curve(model, split, norm, CPU, 20, [0.0, 0.5], 16, seed=1)
    assert [keep is None for keep in passes] == [True, False]  # one batch per fraction, the first unoccluded
    clean = top1(model, split, norm, CPU, 20)
    passes.clear()
    reused = occlusion_curve(model, split, norm, CPU, 20, [0.0, 0.5], 16, seed=1, clean_top1=clean)
    assert reused == measured and len(passes) == 1 and passes[0] is not None  # only the occluded pass ran
    sentinel = occlusion_curve(model, split, norm, CPU, 20, [0.0, 0.5], 16, seed=1, clean_top1=-1.0)
    assert [r["top1"] for r in sentinel] == [-1.0, measured[1]["top1"]]


def test_throughput_fields() -> None:
    model = TokenViT(img_size=8, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=2)
    out = throughput(model, torch.randn(4, 1, 8, 8), CPU, warmup=1, repeats=3)
    assert set(out) == {"img_per_s", "median_s", "repeats"}
    assert out["img_per_s"] == pytest.approx(4 / out["median_s"]) and out["repeats"] == 3


def test_paired_throughput_times_the_reference_twice_for_an_a_a_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    # a fake clock that only the fake calls advance (fn: 2 s, the reference: 1 s): nothing is timed
    clock = SimpleNamespace(now=0.0)
    calls = {"fn": 0, "reference": 0}
    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=lambda: clock.now))

    def call(name: str, seconds: float) -> None:
        calls[name] += 1
        clock.now += seconds

    out = paired_throughput(lambda: call("fn", 2.0), lambda: call("reference", 1.0), 8, CPU, warmup=2, repeats=3)
    assert calls == {"fn": 2 + 3, "reference": 2 * (2 + 3)}  # warm-up and timed runs, the reference twice
    assert (out.img_per_s, out.reference_img_per_s, out.ratio, out.aa_ratio) == (4.0, 8.0, 0.5, 1.0)
    assert not aa_noisy(out.aa_ratio)
    assert aa_noisy(1.06) and aa_noisy(0.94) and not aa_noisy(0.96) and not aa_noisy(1.04)
