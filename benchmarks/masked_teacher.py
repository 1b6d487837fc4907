"""The teacher's forward cost under MaskedKD: keep ratio 1.0 / 0.75 / 0.5 / 0.25 of the patches.

The teacher runs as the finetune stage runs it (`TeacherView`: eval mode, inference mode, patches
chosen by the top-k of a student attention row, the choice included in the time), on the same
batch; every keep ratio is timed in turns with the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import BenchSetup
from maskprune.measure import gmacs, median_seconds
from maskprune.objectives.masked_kd import TeacherView

KEEP_RATIOS = (1.0, 0.75, 0.5, 0.25)


def run(setup: BenchSetup) -> list[dict[str, Any]]:
    """One row per keep ratio in `setup.mode`, timed in turns with an A/A copy of keep 1.0."""
    teacher = setup.teacher()
    spec = setup.params.models.teacher
    x, one = setup.images(spec=spec), setup.images(1, spec=spec)
    scores = torch.rand(len(x), teacher.num_patches, generator=torch.Generator().manual_seed(0)).to(x.device)
    views = [TeacherView(teacher, keep, "student_attn") for keep in KEEP_RATIOS]

    def forward_with(view: TeacherView) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        def forward(images: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
            return teacher(images, keep_idx=view.select(images, None, attn))  # the patch choice is in the time

        return forward

    calls = [setup.executable(forward_with(view), x, scores) for view in views]
    # NOTE: keep 1.0 is timed twice (A/A): the spread of a ratio that should be exactly 1
    twin_s, *seconds = median_seconds([calls[0], *calls], setup.runtime, setup.warmup, setup.repeats)
    aa = twin_s / seconds[0]
    macs = [gmacs(teacher, one, keep_idx=v.select(one, None, scores[:1])) for v in views]
    return [
        {
            "mode": setup.mode,
            "keep_ratio": keep,
            "patches": view.keep,
            "gmacs": m,
            "gmacs_ratio": m / macs[0],
            "img_per_s": len(x) / s,
            "time_ratio": s / seconds[0],
            "speedup": seconds[0] / s,
            "aa_time_ratio": aa,
        }
        for keep, view, m, s in zip(KEEP_RATIOS, views, macs, seconds, strict=True)
    ]
