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


def test_patch_masks_map_onto_images_of_any_size(tmp_path: Path) -> None:
    kept = np.zeros(49, dtype=bool)
    kept[0] = kept[48] = True  # the top-left and bottom-right patches of a grid of 7
    mask = figures.pixel_mask(kept, 7, 24, 32)  # neither side a multiple of 7
    assert mask.shape == (24, 32) and mask.sum() == 4 * 5 + 3 * 4
    assert mask[:4, :5].all() and mask[-3:, -4:].all()  # 24 / 7 = 3.4 rows and 32 / 7 = 4.6 columns a patch
    assert np.array_equal(figures.pixel_mask(kept, 7, 28, 28), np.kron(kept.reshape(7, 7), np.ones((4, 4), bool)))
    images = np.zeros((1, 24, 32), dtype=np.uint8)
    assert figures.token_grid(tmp_path / "t.png", images, {"kept": kept[None]}, 7, "x").is_file()
