"""The report's figures on hand-made inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskprune.report import figures


def test_token_grid_draws_one_panel_per_image_and_column(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 255, (3, 28, 28), dtype=np.uint8)
    kept = np.zeros((3, 49), dtype=bool)
    kept[:, :10] = True
    path = figures.token_grid(tmp_path / "t.png", images, {"input": np.ones((3, 49), bool), "kept": kept}, 7, "x")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
