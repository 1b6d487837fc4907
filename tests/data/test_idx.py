"""The IDX reader on hand-made files, good and corrupt."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from maskprune.data.idx import read_idx, read_idx_pair
from maskprune.errors import MaskpruneError
from tests.conftest import write_idx


@pytest.mark.parametrize("compress", [True, False])
def test_reads_declared_shape_and_values(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("x.gz" if compress else "x"), array, compress=compress)
    out = read_idx(path)
    assert out.shape == (2, 3, 4)
    assert out[1, 2, 3] == 23
    np.testing.assert_array_equal(out, array)


def test_header_bytes_by_hand(tmp_path: Path) -> None:
    # magic 0x00000801 (uint8, 1 dimension), length 3, values 7 8 9
    path = tmp_path / "labels"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    assert read_idx(path).tolist() == [7, 8, 9]


@pytest.mark.parametrize(
    "raw, message",
    [
        (bytes([1, 0, 8, 1, 0, 0, 0, 1, 5]), "bad IDX magic"),
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 5]), "not uint8"),
        (bytes([0, 0, 8, 2, 0, 0]), "truncated IDX header"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 4, 5, 6]), "declares shape (4,)"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 1, 5, 6]), "holds 2"),
    ],
)
def test_corrupt_files_raise_one_line(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(raw)
    with pytest.raises(MaskpruneError, match=re.escape(message)) as info:
        read_idx(path)
    assert "\n" not in str(info.value)


def test_damaged_gzip(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2]))[:-6])
    with pytest.raises(MaskpruneError, match="damaged"):
        read_idx(path)


def test_pair_checks_counts_and_label_range(tmp_path: Path) -> None:
    images = write_idx(tmp_path / "i.gz", np.zeros((3, 2, 2)))
    with pytest.raises(MaskpruneError, match="3 images but l.gz 2 labels"):
        read_idx_pair(images, write_idx(tmp_path / "l.gz", np.array([1, 2])), num_classes=10)
    with pytest.raises(MaskpruneError, match="label 12 is out of range 0..9"):
        read_idx_pair(images, write_idx(tmp_path / "l2.gz", np.array([1, 2, 12])), num_classes=10)
    with pytest.raises(MaskpruneError, match="expected 3 dimensions"):
        read_idx_pair(write_idx(tmp_path / "flat.gz", np.zeros(3)), tmp_path / "l.gz", num_classes=10)
    x, y = read_idx_pair(images, write_idx(tmp_path / "l3.gz", np.array([0, 9, 4])), num_classes=10)
    assert x.shape == (3, 2, 2) and y.tolist() == [0, 9, 4]
