"""Measurements: top-1, occlusion robustness, parameters, GMACs and throughput.

Rules: GMACs from torch.utils.flop_counter at batch 1 on the model as it runs;
throughput in eval + inference mode at a fixed batch after warm-up, the median of repeated timed
runs with device sync, data loading excluded, compared only within one process (a paired
comparison times its reference twice in the same turns: an A/A control of the ratio's noise).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from maskprune.data.loader import Normalizer
from maskprune.data.storage import Split
from maskprune.masking import num_kept, random_keep_idx
from maskprune.runtime import Runtime, all_reduce_sum

KeepFn = Callable[[torch.Tensor], torch.Tensor]  # image indices [batch] -> keep_idx [batch, kept]


@torch.inference_mode()
def top1(
    model: torch.nn.Module,
    split: Split,
    normalizer: Normalizer,
    runtime: Runtime,
    batch_size: int,
    keep_fn: KeepFn | None = None,
) -> float:
    """Top-1 accuracy over `split` (sharded over ranks and summed); `keep_fn` selects patches."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=runtime.device)
    batches = split.batches(batch_size, runtime.device, runtime.rank, runtime.world_size, normalizer.crop_pct)
    for idx, images, labels in batches:
        images = normalizer(images)
        keep = keep_fn(idx).to(runtime.device) if keep_fn else None
        with runtime.autocast(inference=True):
            logits = model(images, keep_idx=keep) if keep is not None else model(images)
        counts[0] += (logits.argmax(dim=-1) == labels).sum()
        counts[1] += len(idx)
    model.train(was_training)
    correct, total = all_reduce_sum(counts, runtime).tolist()
    return correct / max(total, 1.0)


def occlusion_curve(
    model: torch.nn.Module,
    split: Split,
    normalizer: Normalizer,
    runtime: Runtime,
    batch_size: int,
    drop_fractions: list[float],
    num_patches: int,
    seed: int,
    clean_top1: float | None = None,
) -> list[dict[str, float]]:
    """Top-1 when a random fraction of patches is removed at the input, one row per fraction.

    The removed patches of an image depend only on (seed, fraction, image index), so every
    model and every batch size sees the same occlusions.

    Args:
        clean_top1: `top1` of `model` on this very `split`, where already measured: a fraction that
            removes no patch then reads it instead of passing over the split again.
    """
    rows = []
    for fraction in drop_fractions:
        keep = num_kept(num_patches, 1.0 - fraction)
        if keep == num_patches and clean_top1 is not None:
            rows.append({"drop_fraction": fraction, "kept_patches": keep, "top1": clean_top1})
            continue
        gen = torch.Generator().manual_seed(seed * 1000 + int(round(fraction * 1000)))
        split_keep = random_keep_idx(len(split), num_patches, keep, gen)
        keep_fn = split_keep.__getitem__ if keep < num_patches else None
        acc = top1(model, split, normalizer, runtime, batch_size, keep_fn)
        rows.append({"drop_fraction": fraction, "kept_patches": keep, "top1": acc})
    return rows


_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_CPU_SDPA_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
if _CPU_SDPA not in flop_counter.flop_registry:
    # NOTE: torch counts the CUDA fused-attention kernels but not the CPU ones, which would drop
    # the attention matmuls from every CPU FLOPs figure; count them with torch's own formulas.
    @flop_counter.register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(_CPU_SDPA_BACKWARD)
    def _cpu_sdpa_backward_flops(
        grad_out_shape,
        query_shape,
        key_shape,
        value_shape,
        *args,  # noqa: ANN001
        out_shape=None,
        **kwargs,
    ) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations (2 per multiply-accumulate) of one call of `fn`, as it runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def train_step_flops(model: torch.nn.Module, example: torch.Tensor, **forward_kwargs: object) -> float:
    """FLOPs per image of one training step's forward and backward on `example`.

    Runs on a copy of the model in training mode (so the real weights, gradients and random
    streams are untouched); a `(logits, extra)` output counts the logits' backward.
    """
    replica = copy.deepcopy(model).train()
    replica.zero_grad(set_to_none=True)

    def step() -> None:
        out = replica(example, **forward_kwargs)
        logits = out[0] if isinstance(out, tuple) else out
        logits.float().sum().backward()

    cuda_devices = [example.device] if example.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), torch.autocast(example.device.type, enabled=False):
        flops = count_flops(step)
    return flops / example.shape[0]


@torch.inference_mode()
def gmacs(model: torch.nn.Module, example: torch.Tensor, **forward_kwargs: object) -> float:
    """Multiply-accumulates (in 1e9) of one forward of `example` (batch 1), as it actually runs."""
    was_training = model.training
    model.eval()
    flops = count_flops(lambda: model(example, **forward_kwargs))
    model.train(was_training)
    return flops / 2 / 1e9 / example.shape[0]


def median_seconds(
    fns: Sequence[Callable[[], object]], runtime: Runtime, warmup: int, repeats: int, inference: bool = True
) -> list[float]:
    """Median seconds per call of each of `fns`, timed in turns.

    Every function is warmed up, then each round times one call of every function (in an order
    rotated each round), so drift in machine load or clocks hits them all alike. With `inference`
    the calls run under inference mode (and the runtime's autocast either way).
    """
    times: list[list[float]] = [[] for _ in fns]
    with torch.inference_mode(inference), runtime.autocast(inference):
        for fn in fns:
            for _ in range(warmup):
                fn()
        runtime.synchronize()
        for round_ in range(repeats):
            for offset in range(len(fns)):
                i = (round_ + offset) % len(fns)
                start = time.perf_counter()
                fns[i]()
                runtime.synchronize()
                times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def time_calls(fn: Callable[[], object], batch: int, runtime: Runtime, warmup: int, repeats: int) -> dict[str, float]:
    """Images per second of `fn` (which processes `batch` images): median of timed runs."""
    (median,) = median_seconds([fn], runtime, warmup, repeats)
    return {"img_per_s": batch / median, "median_s": median, "repeats": repeats}


@dataclass(frozen=True)
class PairedThroughput:
    """Images per second of a function and of a reference timed in the same turns, with an A/A control.

    The reference is timed twice per round, as two entries of the rotation: `aa_ratio` (its first
    copy's img/s over its second's) is what `ratio` reads when nothing differs, 1 with no bias from
    the order of the turns or drift; its distance from 1 is the noise floor of `ratio`
    (`aa_control.aa_noisy` decides when that makes `ratio` noise).
    """

    img_per_s: float
    reference_img_per_s: float  # the reference's first copy
    aa_ratio: float

    @property
    def ratio(self) -> float:
        """`img_per_s` over `reference_img_per_s`."""
        return self.img_per_s / self.reference_img_per_s


def paired_throughput(
    fn: Callable[[], object],
    reference_fn: Callable[[], object],
    batch: int,
    runtime: Runtime,
    warmup: int,
    repeats: int,
) -> PairedThroughput:
    """Images per second of `fn` and of `reference_fn` (twice: A/A), timed in turns in one process."""
    own, reference, twin = median_seconds([fn, reference_fn, reference_fn], runtime, warmup, repeats)
    return PairedThroughput(batch / own, batch / reference, twin / reference)


def throughput(
    model: torch.nn.Module,
    example: torch.Tensor,
    runtime: Runtime,
    warmup: int,
    repeats: int,
    **forward_kwargs: object,
) -> dict[str, float]:
    """Images per second of `model` in eval mode on the batch `example` (already on the device)."""
    was_training = model.training
    model.eval()
    try:
        return time_calls(lambda: model(example, **forward_kwargs), example.shape[0], runtime, warmup, repeats)
    finally:
        model.train(was_training)
