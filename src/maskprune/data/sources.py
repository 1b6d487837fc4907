"""Raw datasets on disk: Fashion-MNIST IDX files, CIFAR-10 (torchvision layout), ImageFolder trees.

Each reader returns `RawSplits`: uint8 images `[n, channels, height, width]`, int64 labels `[n]`,
the class names and the files read (for checksums). Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskprune.config import DEFAULT_FASHION_MNIST_ROOT, DataSection
from maskprune.data.idx import read_idx_pair
from maskprune.errors import MaskpruneError

FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


@dataclass
class RawSplits:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    files: list[Path] = field(default_factory=list)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _missing_data(cfg: DataSection, what: str) -> MaskpruneError:
    if cfg.format == "idx" and cfg.root == DEFAULT_FASHION_MNIST_ROOT:
        fix = "install it with `sudo apt-get install dataset-fashion-mnist`, or set data.root"
    else:
        fix = "set data.root in params.yaml"
    return MaskpruneError(f"{what} not found under {cfg.root}: {fix} to a folder that holds it")


def read_idx_dataset(cfg: DataSection) -> RawSplits:
    root = Path(cfg.root)
    paths = {}
    for split, stems in _IDX_FILES.items():
        found = [_find_idx(root, stem) for stem in stems]
        if None in found:
            missing = [s for s, p in zip(stems, found, strict=True) if p is None]
            raise _missing_data(cfg, f"IDX file(s) {', '.join(missing)}[.gz]")
        paths[split] = found
    classes = FASHION_MNIST_CLASSES if cfg.name.startswith("fashion") else tuple(map(str, range(10)))
    train_x, train_y = read_idx_pair(*paths["train"], num_classes=len(classes))
    test_x, test_y = read_idx_pair(*paths["test"], num_classes=len(classes))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise MaskpruneError(
            f"{root}: train images {train_x.shape[1:]} and test images {test_x.shape[1:]} differ in size"
        )
    return RawSplits(
        train_images=train_x[:, None],
        train_labels=train_y.astype(np.int64),
        test_images=test_x[:, None],
        test_labels=test_y.astype(np.int64),
        classes=classes,
        files=[p for pair in paths.values() for p in pair],
    )


def read_cifar10(cfg: DataSection) -> RawSplits:
    from torchvision.datasets import CIFAR10

    root = Path(cfg.root)
    try:
        train, test = (CIFAR10(str(root), train=flag, download=False) for flag in (True, False))
    except RuntimeError:
        raise _missing_data(cfg, "CIFAR-10 (cifar-10-batches-py, torchvision layout)") from None
    files = sorted((root / CIFAR10.base_folder).glob("*_batch*"))
    return RawSplits(
        train_images=np.ascontiguousarray(train.data.transpose(0, 3, 1, 2)),
        train_labels=np.asarray(train.targets, dtype=np.int64),
        test_images=np.ascontiguousarray(test.data.transpose(0, 3, 1, 2)),
        test_labels=np.asarray(test.targets, dtype=np.int64),
        classes=tuple(train.classes),
        files=files,
    )


def _read_image_folder(folder: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    from PIL import Image

    images, labels, files = [], [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).rglob("*")):
            if path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(label)
            files.append(path)
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise MaskpruneError(f"{folder}: images differ in size ({sorted(shapes)[:3]}...); resize them to one size")
    stacked = np.stack(images).transpose(0, 3, 1, 2) if images else np.zeros((0, 3, 1, 1), np.uint8)
    return np.ascontiguousarray(stacked), np.asarray(labels, dtype=np.int64), files


def read_image_folder(cfg: DataSection) -> RawSplits:
    """`root/train/<class>/*` and `root/test/<class>/*` (or `root/val/...` as the test split)."""
    root = Path(cfg.root)
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise _missing_data(cfg, "an ImageFolder tree (train/<class>/ and test/<class>/)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    train_x, train_y, train_files = _read_image_folder(root / "train", classes)
    test_x, test_y, test_files = _read_image_folder(test_dir, classes)
    if len(train_x) == 0 or len(test_x) == 0:
        raise _missing_data(cfg, "images in train/ and test/")
    return RawSplits(train_x, train_y, test_x, test_y, tuple(classes), train_files + test_files)


READERS = {"idx": read_idx_dataset, "cifar10": read_cifar10, "imagefolder": read_image_folder}


def read_raw(cfg: DataSection) -> RawSplits:
    return READERS[cfg.format](cfg)
