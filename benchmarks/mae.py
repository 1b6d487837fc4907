"""The cost of an MAE training step at the profile's mask ratio against no masking.

Two pairs, each timed in turns (forward + backward, no optimizer): the encoder alone on the visible
patches vs on all of them, and the whole MAE (encoder + decoder + loss) with the mask vs with every
patch visible. FLOPs per image come from torch.utils.flop_counter on the same calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import IN_CHANS, NUM_CLASSES, BenchSetup
from maskprune.masking import num_kept, random_keep_idx
from maskprune.measure import count_flops, median_seconds
from maskprune.models.mim_heads import MAE, masked_indices, mim_loss
from maskprune.models.vit import build_model


def run(setup: BenchSetup) -> dict[str, Any]:
    cfg, spec = setup.params.pretrain.mae, setup.params.models.student
    torch.manual_seed(0)
    encoder = build_model(spec, NUM_CLASSES, IN_CHANS)
    encoder.reset_classifier(0)
    mae = MAE(encoder, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, IN_CHANS).to(setup.runtime.device)
    mae.train()
    n = encoder.num_patches
    visible = num_kept(n, 1.0 - cfg.mask_ratio)
    x = setup.images()
    gen = torch.Generator().manual_seed(0)
    masked_idx = random_keep_idx(len(x), n, visible, gen).to(x.device)
    all_idx = torch.arange(n, device=x.device).expand(len(x), -1)

    def encoder_step(keep_idx: torch.Tensor | None, images: torch.Tensor) -> Callable[[], None]:
        def step() -> None:
            encoder.forward_tokens(images, keep_idx).tokens.float().mean().backward()

        return step

    def mae_step(keep_idx: torch.Tensor, images: torch.Tensor) -> Callable[[], None]:
        masked = torch.zeros(len(images), n, dtype=torch.bool, device=images.device)
        if keep_idx.shape[1] < n:
            masked.scatter_(1, masked_indices(keep_idx, n), True)
        else:
            masked[:] = True  # nothing hidden: score every patch so the step does the same work

        def step() -> None:
            out = mae(images, keep_idx)
            mim_loss("mae", out.pred, images, spec.patch_size, masked, cfg.norm_pix_loss).backward()

        return step

    steps = [
        encoder_step(masked_idx, x),
        encoder_step(None, x),
        mae_step(masked_idx, x),
        mae_step(all_idx, x),
    ]
    seconds = median_seconds(steps, setup.runtime, setup.warmup, setup.repeats, inference=False)
    one = x[:1]
    with setup.runtime.autocast():
        flops = [
            count_flops(encoder_step(masked_idx[:1], one)),
            count_flops(encoder_step(None, one)),
            count_flops(mae_step(masked_idx[:1], one)),
            count_flops(mae_step(all_idx[:1], one)),
        ]
    enc_masked, enc_full, mae_masked, mae_full = seconds
    return {
        "mask_ratio": cfg.mask_ratio,
        "visible_patches": visible,
        "patches": n,
        "batch": len(x),
        "encoder_step_s": enc_masked,
        "encoder_step_s_unmasked": enc_full,
        "encoder_time_ratio": enc_masked / enc_full,
        "encoder_gflops_per_image": flops[0] / 1e9,
        "encoder_gflops_per_image_unmasked": flops[1] / 1e9,
        "encoder_flops_ratio": flops[0] / flops[1],
        "mae_step_s": mae_masked,
        "mae_step_s_unmasked": mae_full,
        "mae_time_ratio": mae_masked / mae_full,
        "mae_gflops_per_image": flops[2] / 1e9,
        "mae_gflops_per_image_unmasked": flops[3] / 1e9,
        "mae_flops_ratio": flops[2] / flops[3],
    }
