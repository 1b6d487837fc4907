"""Inference speed of the token-pruned models against the unpruned student, beside their GMACs.

For EViT and DynamicViT at each of the profile's keep rates, and ToMe at the per-block merge
schedule whose GMACs come closest to EViT's at that keep rate: the measured speed-up (img/s over
the unpruned model's, timed in turns in one process), the theoretical speed-up (the unpruned
model's GMACs over the pruned one's) and their ratio, the efficiency (1.0 = every MAC saved is
time saved).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from benchmarks.common import BenchSetup
from maskprune.config import PRUNING_METHODS
from maskprune.measure import gmacs, median_seconds
from maskprune.models.pruned import PruningSpec, make_pruned, pruning_blocks
from maskprune.models.tome import apply_tome, tome_schedule_for


def pruned_variants(setup: BenchSetup, base: torch.nn.Module, example: torch.Tensor) -> list[dict[str, Any]]:
    """Every pruned model of the comparison, as {method, keep_rate, tome_schedule, model}.

    The sham keep rate 1.0 drops nothing, so it has no speed-up to measure and is left out.
    """
    blocks = pruning_blocks(len(base.blocks), setup.params.prune.locations)
    variants = []
    for method in PRUNING_METHODS:
        for keep in (k for k in setup.params.prune.keep_rates if k < 1.0):
            spec = PruningSpec(method, keep, blocks, fuse_token=setup.params.prune.evit.fuse_token)
            variants.append(
                {
                    "method": method,
                    "keep_rate": keep,
                    "tome_schedule": None,
                    "model": make_pruned(copy.deepcopy(base), spec).eval(),
                }
            )
    evit = {v["keep_rate"]: gmacs(v["model"], example) for v in variants if v["method"] == "evit"}
    for keep, target in evit.items():
        schedule = tome_schedule_for(base, target, example)
        variants.append(
            {
                "method": "tome",
                "keep_rate": keep,
                "tome_schedule": schedule,
                "model": apply_tome(copy.deepcopy(base), schedule).eval(),
            }
        )
    return variants


def run(setup: BenchSetup) -> list[dict[str, Any]]:
    """One row per pruned model in `setup.mode`; all of them and the reference timed in turns."""
    base = setup.student()
    x, one = setup.images(), setup.images(1)
    base_macs = gmacs(base, one)
    variants = pruned_variants(setup, base, one)
    calls = [setup.executable(base, x)] + [setup.executable(v["model"], x) for v in variants]
    # NOTE: the reference is timed twice (A/A): the spread of a ratio that should be exactly 1
    ref_s, twin_s, *own = median_seconds([calls[0], *calls], setup.runtime, setup.warmup, setup.repeats)
    rows = []
    for variant, own_s in zip(variants, own, strict=True):
        model = variant.pop("model")
        macs = gmacs(model, one)
        theoretical, measured = base_macs / macs, ref_s / own_s
        rows.append(
            {
                "mode": setup.mode,
                **variant,
                "gmacs": macs,
                "gmacs_unpruned": base_macs,
                "gmacs_ratio": macs / base_macs,
                "img_per_s": len(x) / own_s,
                "img_per_s_unpruned": len(x) / ref_s,
                "theoretical_speedup": theoretical,
                "speedup": measured,
                "efficiency": measured / theoretical,
                "aa_speedup": ref_s / twin_s,
            }
        )
    return rows
