"""What this machine offers the stages: Python, the packages they import, the device.

    python -m maskprune.environment [--out FILE.json]

Prints one line per fact and writes them as JSON. Exits with one line naming what is missing when
a package the stages need cannot be imported.
The orchestration packages (DVC, MLflow, Prefect) are reported but not required: `python -m
stages` runs the pipeline without them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from maskprune import atomic
from maskprune.errors import MaskpruneError, exit_on_user_error

# import name -> distribution name
REQUIRED = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "numpy": "numpy",
    "pandas": "pandas",
    "matplotlib": "matplotlib",
    "safetensors": "safetensors",
    "yaml": "pyyaml",
    "pydantic": "pydantic",
    "tabulate": "tabulate",
}
OPTIONAL = {"dvc": "dvc", "mlflow": "mlflow", "prefect": "prefect"}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU's model name ('AMD EPYC 7B13'), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe() -> dict[str, Any]:
    """The facts; raises MaskpruneError naming every missing requirement."""
    missing = []
    packages: dict[str, str | None] = {}
    for module, distribution in REQUIRED.items():
        try:
            importlib.import_module(module)
            packages[distribution] = _version(distribution) or "unknown"
        except ImportError:
            packages[distribution] = None
            missing.append(distribution)
    if missing:
        raise MaskpruneError(
            f"missing package(s) {', '.join(missing)}: install them, or on a machine without network carry "
            "the wheels that `scripts/gpu_check.sh --prepare` downloads (.whl/)"
        )
    import torch

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "packages": packages,
        "orchestration": {d: _version(d) for d in OPTIONAL.values()},
        "cuda": torch.cuda.is_available(),
        "disk_free_gb": round(shutil.disk_usage(Path.cwd()).free / 2**30, 1),
    }
    if facts["cuda"]:
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            cuda_runtime=torch.version.cuda,
            bf16=torch.cuda.is_bf16_supported(),
        )
    return facts


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskprune.environment", description=__doc__)
    parser.add_argument("--out", type=Path, help="also write the facts here as JSON")
    args = parser.parse_args(argv)
    facts = probe()
    for key, value in facts.items():
        print(f"environment: {key}: {value}")
    if args.out:
        atomic.write_json(args.out, facts)


if __name__ == "__main__":
    main()
