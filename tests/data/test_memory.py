"""Memory does not grow with the data: prepare and one epoch at 1,000 and 4,000 images (peak RSS, own processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env
from tests.data.trees import image_tree

GROWTH_MB = 32


def _peak(*args: str) -> float:
    env = subprocess_env(PYTHONPATH=f"{REPO / 'src'}:{REPO}")
    done = subprocess.run(
        [sys.executable, str(REPO / "tests/data/peak_rss.py"), *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_peak_memory_of_prepare_and_an_epoch_does_not_grow_with_the_images(tmp_path: Path) -> None:
    peaks = {}
    for images in (1000, 4000):
        per_class = images // 3 // 5 * 4  # 4/5 of the images in train/, the rest in test/
        tree = image_tree(tmp_path / f"tree{images}", per_class, images // 3 - per_class, side=40)
        out = tmp_path / f"out{images}"
        peaks[images] = (_peak("prepare", str(tree), str(out)), _peak("epoch", str(out / "tree")))
    (prepare_small, epoch_small), (prepare_large, epoch_large) = peaks[1000], peaks[4000]
    assert prepare_large - prepare_small < GROWTH_MB, peaks
    assert epoch_large - epoch_small < GROWTH_MB, peaks
    print(
        f"peak RSS MB at 1,000 and 4,000 images: prepare {prepare_small:.0f} / {prepare_large:.0f}, "
        f"epoch {epoch_small:.0f} / {epoch_large:.0f}"
    )
