"""What every benchmark shares: the device, the profile's models, batch, precision and timing settings.

Models come from a profile (`cpu` on a CPU, `gpu` on a CUDA device, by default) with fresh weights:
speed does not depend on the weights, and the suite then runs from a fresh clone with no pipeline
outputs. Inputs are random images of the profile's size, already on the device (data loading is
excluded, as DESIGN.md's measurement rules ask).
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch

from maskprune.config import ModelSpec, Params
from maskprune.models.vit import TokenViT, build_model
from maskprune.runtime import Runtime

NUM_CLASSES = 10  # Fashion-MNIST, the embedded default
IN_CHANS = 1


@dataclass(frozen=True)
class BenchSetup:
    """One benchmark run's settings (all recorded in the results file)."""

    runtime: Runtime
    params: Params  # the profile the models and keep rates come from
    batch: int
    warmup: int
    repeats: int
    compile_mode: str | None = None  # torch.compile mode for the timed models; None = eager

    @property
    def dtype(self) -> str:
        return "bf16 autocast" if self.runtime.amp_dtype == torch.bfloat16 else "fp32"

    def model(self, spec: ModelSpec) -> TokenViT:
        torch.manual_seed(0)
        return build_model(spec, NUM_CLASSES, IN_CHANS).to(self.runtime.device).eval()

    def student(self) -> TokenViT:
        return self.model(self.params.models.student)

    def teacher(self) -> TokenViT:
        return self.model(self.params.models.teacher)

    def images(self, batch: int | None = None, spec: ModelSpec | None = None) -> torch.Tensor:
        size = (spec or self.params.models.student).img_size
        gen = torch.Generator(device="cpu").manual_seed(0)
        return torch.randn(batch or self.batch, IN_CHANS, size, size, generator=gen).to(self.runtime.device)

    @property
    def compile(self) -> bool:
        return self.compile_mode is not None

    def maybe_compile(self, fn):  # noqa: ANN001, ANN201 - a module or function, compiled or as is
        return torch.compile(fn, mode=self.compile_mode) if self.compile else fn

    def describe(self) -> dict[str, Any]:
        return {
            "profile": self.params.profile,
            "batch": self.batch,
            "dtype": self.dtype,
            "threads": torch.get_num_threads(),
            "warmup": self.warmup,
            "repeats": self.repeats,
            "compile": self.compile_mode or False,
            "student": self.params.models.student.model_dump(),
            "teacher": self.params.models.teacher.model_dump(),
            "timing": "median seconds per call over `repeats` rounds after `warmup` calls; the variants of one "
                      "comparison are timed in turns in one process, with device sync",  # fmt: skip
        }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(runtime: Runtime) -> dict[str, Any]:
    """The device's name, a file-name slug for it, and the software versions."""
    if runtime.device.type == "cuda":
        name = slug = torch.cuda.get_device_name(runtime.device)
    else:
        name = f"{cpu_name()} ({torch.get_num_threads()} threads)"
        slug = f"cpu {re.sub(r'cpu @.*', '', cpu_name().lower())} {torch.get_num_threads()}t"
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)", "", slug.lower())).strip("-")
    return {"name": name, "type": runtime.device.type, "slug": slug, "torch": torch.__version__,
            "timm": timm.__version__, "python": platform.python_version()}  # fmt: skip
