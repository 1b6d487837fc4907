"""bf16 autocast against fp32 on this device, inference and training steps measured separately.

Inference: the student and the teacher in eval + inference mode at the benchmark batch, fp32 and
bf16 timed in turns. Training: one optimizer step of the student (forward, backward, AdamW) for
each batch size x precision x memory format (channels-last input or not), all timed in turns,
and compiled (at the benchmark batch, per precision) when the run's modes include a compiled one.
`runtime.amp: auto` follows these numbers: on a CPU it turns bf16 on for inference only, and only
where the CPU runs bf16 natively (`native_bf16` below).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from benchmarks.common import BenchSetup, autocast, training_step
from maskprune.measure import median_seconds
from maskprune.runtime import NATIVE_BF16_FLAGS, cpu_flags

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def inference_rows(setup: BenchSetup, plain: Any) -> list[dict[str, Any]]:
    """fp32 and bf16 img/s of the student and the teacher; bf16's speed-up over fp32."""
    rows = []
    for role, model in (("student", setup.student()), ("teacher", setup.teacher())):
        spec = setup.params.models.student if role == "student" else setup.params.models.teacher
        x = setup.images(spec=spec)

        def call(dtype: torch.dtype | None, model: torch.nn.Module = model, x: torch.Tensor = x) -> Callable[[], Any]:
            def forward() -> Any:
                with autocast(x.device, dtype):
                    return model(x)

            return forward

        fp32_s, bf16_s = median_seconds([call(None), call(torch.bfloat16)], plain, setup.warmup, setup.repeats)
        rows.append(
            {
                "model": role,
                "batch": len(x),
                "fp32_img_per_s": len(x) / fp32_s,
                "bf16_img_per_s": len(x) / bf16_s,
                "bf16_speedup": fp32_s / bf16_s,
            }
        )
    return rows


def training_rows(setup: BenchSetup, plain: Any) -> list[dict[str, Any]]:
    """img/s of a student training step per batch x dtype x channels-last (x compile)."""
    batches = sorted({setup.batch, setup.batch * 4})
    configs = list(itertools.product(batches, DTYPES, (False, True), (False,)))
    if any(m.startswith("compile") for m in setup.modes):  # compiled at the benchmark batch only
        configs += [(setup.batch, dtype, False, True) for dtype in DTYPES]
    calls = []
    for batch, dtype, channels_last, compiled in configs:
        model = setup.student().train()
        net = torch.compile(model) if compiled else model
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = setup.images(batch)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        labels = torch.randint(0, setup.num_classes, (batch,), device=x.device)
        calls.append(training_step(net, optimizer, x, labels, DTYPES[dtype]))
    # NOTE: a training step is 10-100x an inference call, so fewer rounds give as stable a median
    seconds = median_seconds(calls, plain, *training_rounds(setup), inference=False)
    return [
        {"batch": batch, "dtype": dtype, "channels_last": last, "compile": compiled, "img_per_s": batch / s}
        for (batch, dtype, last, compiled), s in zip(configs, seconds, strict=True)
    ]


def training_rounds(setup: BenchSetup) -> tuple[int, int]:
    """(warm-up, repeats) of the training steps: a quarter of the setup's rounds, at least 3."""
    return max(1, setup.warmup // 2), max(3, setup.repeats // 4)


def native_bf16() -> dict[str, Any]:
    """Whether this CPU runs bf16 natively, by its flags."""
    flags = cpu_flags()
    return {
        "native_bf16_flags": sorted(flags & NATIVE_BF16_FLAGS),
        "native_bf16": bool(flags & NATIVE_BF16_FLAGS),
    }


def run(setup: BenchSetup) -> dict[str, Any]:
    plain = replace(setup.runtime, amp_dtype=None, inference_amp_dtype=None)  # each call sets its own autocast
    device = {} if setup.runtime.device.type == "cuda" else native_bf16()
    warmup, repeats = training_rounds(setup)
    return {
        **device,
        "inference": inference_rows(setup, plain),
        "training": training_rows(setup, plain),
        "training_warmup": warmup,
        "training_repeats": repeats,
    }
