"""Precision choice (`runtime.amp`) and the CPU flags it reads, on hand-written inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskprune.config import RuntimeSection
from maskprune.environment import probe
from maskprune.errors import MaskpruneError
from maskprune.runtime import amp_dtypes, cpu_flags, setup_runtime

BF16 = torch.bfloat16
AMX = frozenset({"avx512f", "amx_tile", "amx_bf16", "avx512_bf16"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize(
    ("amp", "cuda", "flags", "expected"),
    [
        ("auto", True, frozenset(), (BF16, BF16)),  # CUDA: bf16 everywhere
        ("auto", False, AMX, (None, BF16)),  # native bf16 CPU: inference only (training measured slower)
        ("auto", False, frozenset({"avx512_bf16"}), (None, BF16)),
        ("auto", False, AVX2, (None, None)),  # emulated bf16 is slower: fp32
        ("bf16", False, AVX2, (BF16, BF16)),  # asked for
        ("fp32", True, frozenset(), (None, None)),
        ("fp32", False, AMX, (None, None)),
    ],
)
def test_amp_dtypes(amp: str, cuda: bool, flags: frozenset[str], expected: tuple) -> None:
    assert amp_dtypes(amp, cuda, flags) == expected


def test_cpu_flags_reads_the_first_cpu(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(info) == frozenset({"fpu", "avx2", "amx_bf16"})
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_autocast_follows_training_or_inference_dtype() -> None:
    runtime = setup_runtime(RuntimeSection(device="cpu", amp="fp32"))
    runtime = type(runtime)(runtime.device, None, False, False, inference_amp_dtype=BF16)
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with runtime.autocast():
        assert layer(x).dtype == torch.float32
    with runtime.autocast(inference=True):
        assert layer(x).dtype == BF16


def test_environment_names_missing_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    facts = probe()
    assert facts["packages"]["torch"] and facts["cuda"] is torch.cuda.is_available()
    monkeypatch.setitem(__import__("maskprune.environment").environment.REQUIRED, "no_such_module", "no-such-pkg")
    with pytest.raises(MaskpruneError, match="missing package\\(s\\) no-such-pkg"):
        probe()
