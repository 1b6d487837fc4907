"""Running DVC commands from Prefect tasks, their output streamed into the task's log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger

DVC = str(Path(sys.executable).with_name("dvc"))


def run_dvc(args: list[str], root: str, env: dict[str, str]) -> list[str]:
    """Run `dvc <args>` in `root`; returns its output lines, raises with its last error line."""
    logger = get_run_logger()
    proc = subprocess.Popen(
        [DVC, *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        logger.info(line.rstrip())
    if proc.wait() != 0:
        errors = [ln for ln in lines if "error" in ln.lower()] or lines[-1:]
        raise RuntimeError(f"dvc {' '.join(args[:2])} failed: {errors[-1] if errors else 'no output'}")
    return lines
