"""Generated image trees for the data tests: ImageFolder layouts with mixed sizes, modes and formats."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog", "eel")


def _image(rng: np.random.Generator, index: int) -> tuple[Image.Image, str]:
    """A small image whose size, mode and format vary with `index` (RGB JPEG, grey PNG, RGBA PNG, 16-bit PNG)."""
    height, width = 20 + index % 7, 24 + index % 5
    kind = index % 4
    if kind == 0:
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)), "jpg"
    if kind == 1:
        return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)), "png"
    if kind == 2:
        return Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), mode="RGBA"), "png"
    wide = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    return Image.fromarray(wide), "png"


def image_tree(
    root: Path,
    train_per_class: int,
    test_per_class: int,
    seed: int = 0,
    side: int = 0,
) -> Path:
    """`root/train/<class>/*` and `root/test/<class>/*`; `side` > 0 makes every image an RGB JPEG of side x side."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                if side:
                    image, ext = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)), "jpg"
                else:
                    image, ext = _image(rng, i * len(CLASSES) + label)
                image.save(folder / f"{i:05d}.{ext}")
    return root


def valid_png(size: int) -> bytes:
    """A decodable PNG padded with trailing bytes to exactly `size` bytes (PNG readers stop at IEND)."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert len(data) <= size
    return data + b"\0" * (size - len(data))
