"""Reader for the IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed).

Layout: two zero bytes, a type code (0x08 = uint8), the number of dimensions, one big-endian
uint32 per dimension, then the values in row-major order.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from maskprune.errors import MaskpruneError

_UINT8 = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Read a uint8 IDX file (`.gz` or raw) into an array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise MaskpruneError(f"{path}: cannot read ({err}); the file is damaged, reinstall it") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise MaskpruneError(f"{path}: bad IDX magic number; this is not an IDX file")
    if raw[2] != _UINT8:
        raise MaskpruneError(f"{path}: IDX type code 0x{raw[2]:02x} is not uint8 (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise MaskpruneError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise MaskpruneError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_pair(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images `[n, h, w]` and labels `[n]`, checked against each other and the class count."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise MaskpruneError(f"{images_path}: expected 3 dimensions [n, h, w], got {images.shape}")
    if labels.ndim != 1:
        raise MaskpruneError(f"{labels_path}: expected 1 dimension [n], got {labels.shape}")
    if len(images) != len(labels):
        raise MaskpruneError(
            f"{images_path.name} holds {len(images)} images but {labels_path.name} "
            f"{len(labels)} labels; the pair does not belong together"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise MaskpruneError(f"{labels_path}: label {int(labels.max())} is out of range 0..{num_classes - 1}")
    return images, labels
