"""What every benchmark shares: the device, the models, batch, precision, timing and execution mode.

Models come from a profile (`cpu` on a CPU, `gpu` on a CUDA device, by default) or from a preset
(`paper`: the papers' scale), with fresh weights: speed does not depend on the weights, and the
suite then runs from a fresh clone with no pipeline outputs. Inputs are random images of the
models' size, already on the device (data loading is excluded, as the measurement rules ask).

A mode says how a model's forward is executed:
  - `eager`: PyTorch eager, one kernel launch per operation;
  - `graph`: the eager kernels captured once in a CUDA graph and replayed (no launch overhead);
  - `compile`: `torch.compile` in its default mode (Inductor's fused kernels), static shapes;
  - `compile-graph`: that compiled forward captured in a CUDA graph (what the `reduce-overhead`
    mode does, without compiling a second time).
The two graph modes exist on CUDA only.
"""

from __future__ import annotations

import contextlib
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn.functional as F

from maskprune.config import ModelSpec, Params
from maskprune.environment import cpu_name
from maskprune.models.vit import TokenViT, build_model
from maskprune.runtime import Runtime

NUM_CLASSES = 10  # Fashion-MNIST, the embedded default
IN_CHANS = 1
MODES = ("eager", "graph", "compile", "compile-graph")
GRAPH_MODES = ("graph", "compile-graph")


@dataclass(frozen=True)
class Preset:
    """A benchmark scale that does not come from a pipeline profile."""

    description: str
    sets: list[str]  # params overrides, as `--set` items
    in_chans: int
    num_classes: int
    batch: int
    amp: str  # runtime.amp


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        description="the papers' scale: DeiT-S/16 student and DeiT-B/16 teacher at 224 px (196 patches + [CLS]), "
        "RGB, 1000 classes, batch 256, bf16 autocast, fused attention",
        sets=[
            "models.student={name: deit_small_patch16_224, img_size: 224, patch_size: 16, drop_path_rate: 0.0, "
            "pretrained_file: '', normalize: auto}",
            "models.teacher={name: deit_base_patch16_224, img_size: 224, patch_size: 16, drop_path_rate: 0.0, "
            "pretrained_file: '', normalize: auto}",
            "prune.keep_rates=[0.7, 0.5]",
            "prune.locations=[]",
        ],
        in_chans=3,
        num_classes=1000,
        batch=256,
        amp="bf16",
    ),
}


@dataclass(frozen=True)
class BenchSetup:
    """One benchmark run's settings (all recorded in the results file)."""

    runtime: Runtime
    params: Params  # the profile the models and keep rates come from
    batch: int
    warmup: int
    repeats: int
    mode: str = "eager"  # one of MODES
    preset: str | None = None
    in_chans: int = IN_CHANS
    num_classes: int = NUM_CLASSES
    modes: list[str] = field(default_factory=lambda: ["eager"])  # every mode of the run

    @property
    def dtype(self) -> str:
        def name(dtype: torch.dtype | None) -> str:
            return "bf16 autocast" if dtype == torch.bfloat16 else "fp32"

        train, infer = name(self.runtime.amp_dtype), name(self.runtime.inference_amp_dtype)
        return train if train == infer else f"inference {infer}, training {train}"

    def model(self, spec: ModelSpec) -> TokenViT:
        torch.manual_seed(0)
        return build_model(spec, self.num_classes, self.in_chans).to(self.runtime.device).eval()

    def student(self) -> TokenViT:
        return self.model(self.params.models.student)

    def teacher(self) -> TokenViT:
        return self.model(self.params.models.teacher)

    def images(self, batch: int | None = None, spec: ModelSpec | None = None) -> torch.Tensor:
        size = (spec or self.params.models.student).img_size
        gen = torch.Generator(device="cpu").manual_seed(0)
        return torch.randn(batch or self.batch, self.in_chans, size, size, generator=gen).to(self.runtime.device)

    @property
    def compile(self) -> bool:
        return self.mode.startswith("compile")

    def executable(self, fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        """`fn(*args)` as a call with no arguments, executed in this setup's mode."""
        compiled = torch.compile(fn, dynamic=False) if self.compile else fn
        call = lambda: compiled(*args)  # noqa: E731
        return cuda_graphed(call, self.runtime) if self.mode in GRAPH_MODES else call

    def describe(self) -> dict[str, Any]:
        return {
            "profile": self.params.profile,
            "preset": self.preset,
            "batch": self.batch,
            "dtype": self.dtype,
            "threads": torch.get_num_threads(),
            "warmup": self.warmup,
            "repeats": self.repeats,
            "modes": self.modes,
            "student": self.params.models.student.model_dump(),
            "teacher": self.params.models.teacher.model_dump(),
            "in_chans": self.in_chans,
            "num_classes": self.num_classes,
            "timing": "median seconds per call over `repeats` rounds after `warmup` calls; the variants of one "
            "comparison are timed in turns in one process, with device sync; the A/A control times the "
            "reference twice in the same turns",
        }


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[object]:
    """Autocast to `dtype` on `device`, or nothing for fp32 (None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def training_step(
    net: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> Callable[[], None]:
    """One optimizer step of a classifier as a call: forward (under `dtype` autocast), cross-entropy,
    backward, `optimizer` step.

    Args:
        net: the model, or its compiled forward.
        optimizer: over the model's parameters.
        images: [batch, channels, height, width].
        labels: [batch] class indices.
        dtype: the autocast dtype, None for fp32.
    """

    def step() -> None:
        with autocast(images.device, dtype):
            loss = F.cross_entropy(net(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def cuda_graphed(call: Callable[[], Any], runtime: Runtime, warmup: int = 3) -> Callable[[], Any]:
    """`call` captured once in a CUDA graph; the returned function replays it.

    Warm-up runs on a side stream first (lazy initialisation, compilation), as CUDA graph capture
    requires. Inference mode and the runtime's inference autocast are on during capture, with the
    autocast weight cache off (a cached cast would be captured as a stale tensor).
    """
    if runtime.device.type != "cuda":
        raise ValueError("CUDA graphs need a CUDA device")
    dtype = runtime.inference_amp_dtype
    autocast = torch.autocast("cuda", dtype=dtype, cache_enabled=False) if dtype else contextlib.nullcontext()
    stream = torch.cuda.Stream(runtime.device)
    stream.wait_stream(torch.cuda.current_stream(runtime.device))
    with torch.cuda.stream(stream), torch.inference_mode(), autocast:
        for _ in range(warmup):
            call()
    torch.cuda.current_stream(runtime.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), autocast, torch.cuda.graph(graph):
        call()
    return graph.replay


def device_info(runtime: Runtime) -> dict[str, Any]:
    """The device's name, a file-name slug for it, and the software versions."""
    if runtime.device.type == "cuda":
        name = slug = torch.cuda.get_device_name(runtime.device)
    else:
        name = f"{cpu_name()} ({torch.get_num_threads()} threads)"
        slug = f"cpu {re.sub(r'cpu @.*', '', cpu_name().lower())} {torch.get_num_threads()}t"
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)", "", slug.lower())).strip("-")
    return {
        "name": name,
        "type": runtime.device.type,
        "slug": slug,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }
