"""Raw datasets on disk: a missing dataset names its install command; ImageFolder trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskprune.errors import MaskpruneError
from stages.prepare import prepare_dataset
from tests.conftest import cpu_params, updated


def test_missing_dataset_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(
        MaskpruneError, match="not found under .*point data.root at a folder that holds it in params.local.yaml"
    ):
        prepare_dataset(updated(cpu_params().data, root=str(tmp_path)), 0, tmp_path / "out")
    default = cpu_params().data
    if not Path(default.root, "train-images-idx3-ubyte.gz").exists():
        with pytest.raises(MaskpruneError, match="apt-get install dataset-fashion-mnist"):
            prepare_dataset(default, 0, tmp_path / "out")


def test_image_folder_source(tmp_path: Path) -> None:
    from PIL import Image

    for split, n in (("train", 10), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "tree" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 20, 0, 200 if cls == "dog" else 0)).save(folder / f"{i}.png")
    cfg = updated(cpu_params().data, name="pets", format="imagefolder", root=str(tmp_path / "tree"), val_fraction=0.25)
    meta = prepare_dataset(cfg, 0, tmp_path / "prepared")
    assert meta["classes"] == ["cat", "dog"] and meta["image_shape"] == [3, 8, 8]
    assert meta["counts"] == {"train": 15, "val": 5, "test": 4}
    assert list(meta["sources"])[0].startswith("24 files under")
