"""The finetune stage refuses an unknown variant before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskprune.errors import MaskpruneError
from maskprune.runtime import Runtime
from stages.finetune import compute
from tests.conftest import cpu_params

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, compile=False, progress=False)


def test_unknown_variant_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(MaskpruneError, match="unknown finetune variant 'masky'; choose one of full, masked"):
        compute(cpu_params(), tmp_path, CPU, "masky")
