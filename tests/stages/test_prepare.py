"""The prepare stage: splits, meta and checksums on disk, atomic output that survives a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from maskprune.data.storage import load_prepared
from maskprune.errors import MaskpruneError
from stages.prepare import prepare_dataset
from tests.conftest import REPO, cpu_params, subprocess_env, updated, write_idx

DAC = "-dac_override,-dac_read_search"


def test_prepare_writes_splits_meta_and_checksums(idx_root: Path, tmp_path: Path) -> None:
    cfg = updated(cpu_params().data, root=str(idx_root), val_fraction=0.25)
    meta = prepare_dataset(cfg, seed=3, out_root=tmp_path / "prepared")
    assert meta["counts"] == {"train": 150, "val": 50, "test": 50}
    assert meta["classes"][0] == "t-shirt/top" and meta["num_classes"] == 10
    assert meta["image_shape"] == [1, 28, 28]
    assert len(meta["sources"]) == 4 and all(len(h) == 64 for h in meta["sources"].values())
    data = load_prepared(tmp_path / "prepared" / "fashion_mnist")
    assert data.splits["train"].images.dtype == torch.uint8
    assert data.splits["train"].images.shape == (150, 1, 28, 28)
    # the split is a partition of the training file, reproducible from the seed
    again = prepare_dataset(cfg, seed=3, out_root=tmp_path / "again")
    assert again == meta
    assert np.array_equal(np.load(tmp_path / "again/fashion_mnist/val_labels.npy"), data.splits["val"].labels.numpy())


def test_corrupt_dataset_writes_nothing(idx_root: Path, tmp_path: Path) -> None:
    write_idx(idx_root / "t10k-labels-idx1-ubyte.gz", np.full(50, 11))
    out = tmp_path / "prepared"
    with pytest.raises(MaskpruneError, match="label 11 is out of range"):
        prepare_dataset(updated(cpu_params().data, root=str(idx_root)), 0, out)
    assert not out.exists() or not any(out.iterdir())  # no partial or temporary folder left


def test_failed_rewrite_keeps_previous_output(idx_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prepare_dataset(updated(cpu_params().data, root=str(idx_root)), 0, out)
    before = (out / "fashion_mnist" / "meta.json").read_text()
    (idx_root / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(MaskpruneError):
        prepare_dataset(updated(cpu_params().data, root=str(idx_root)), 0, out)
    assert (out / "fashion_mnist" / "meta.json").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["fashion_mnist"]


def test_an_unreadable_data_folder_is_one_line_naming_it(idx_root: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    params = cpu_params().model_dump()
    params["data"]["root"] = str(idx_root)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / "dvc.yaml").write_text("stages: {}\n")
    idx_root.chmod(0)
    # root reads any file: drop the capabilities that let it, so the mode applies as it does to users
    unprivileged = ["setpriv", f"--bounding-set={DAC}", f"--inh-caps={DAC}"] if os.geteuid() == 0 else []
    env = subprocess_env(PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}")
    done = subprocess.run(
        [*unprivileged, sys.executable, "-m", "stages.prepare"], cwd=work, env=env, capture_output=True, text=True
    )
    idx_root.chmod(0o755)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"maskprune: error: {idx_root}") and "permission denied" in line and "data.root" in line
    assert not (work / "data").exists()
