"""Raw datasets on disk: Fashion-MNIST IDX files, CIFAR-10 (torchvision layout), ImageFolder trees, WebDataset shards.

The array readers return `RawSplits`: uint8 images `[n, channels, height, width]`, int64 labels
`[n]`, the class names and the files read (for checksums). The image sources (ImageFolder,
WebDataset) are first *listed*: each image's file, byte range and label, with no pixel decoded, so
that the sharded storage can stream them in bounded memory; `decode` turns one image's bytes into
pixels the same way everywhere. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

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
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class UnreadableImage(Exception):
    """An image file that cannot be decoded (truncated, corrupt or not an image)."""


class Entry(NamedTuple):
    """One listed image: `size` bytes at `offset` of the file at `path` (a tar shard or the image file)."""

    path: str
    offset: int
    size: int
    label: int
    ext: str


@dataclass
class Listing:
    classes: tuple[str, ...]
    train: list[Entry]
    test: list[Entry]


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
    fix = (
        "point data.root at a folder that holds it in params.local.yaml, then rerun "
        "`python -m maskprune.profile <profile>` (it writes params.yaml)"
    )
    if cfg.format == "idx" and cfg.root == DEFAULT_FASHION_MNIST_ROOT:
        fix = f"install it with `sudo apt-get install dataset-fashion-mnist`, or {fix}"
    return MaskpruneError(f"{what} not found under {cfg.root}: {fix}")


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


def image_files(folder: Path) -> list[tuple[str, int]]:
    """(path, bytes) of every image under `folder`, sorted; an unreadable folder is one line naming it."""
    found: list[tuple[str, int]] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=True):
                        pending.append(Path(entry.path))
                    elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                        found.append((entry.path, entry.stat().st_size))
        except OSError as err:
            raise MaskpruneError(
                f"{current}: cannot read ({err.strerror or err}); "
                "make it readable (chmod -R a+rX) or move it out of data.root"
            ) from None
    return sorted(found)


def _folder_entries(folder: Path, classes: list[str], required: bool) -> list[Entry]:
    """The images of each class folder; `required`: an empty class folder is an error (else the split lacks it)."""
    entries = []
    for label, name in enumerate(classes):
        files = image_files(folder / name) if required or (folder / name).is_dir() else []
        if required and not files:
            raise MaskpruneError(
                f"{folder / name}: the class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "add images or remove the folder"
            )
        entries.extend(Entry(path, 0, size, label, Path(path).suffix.lower()[1:]) for path, size in files)
    return entries


def _class_folders(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_dir())
    except OSError as err:
        raise MaskpruneError(f"{folder}: cannot read ({err.strerror or err}); make it readable (chmod a+rX)") from None


def _test_dir(root: Path) -> Path | None:
    return next((root / n for n in ("test", "val") if (root / n).is_dir()), None)


def list_image_folder(cfg: DataSection) -> Listing:
    """`root/train/<class>/**` and `root/test/<class>/**` (or `root/val/...`): each image's file, size and label.

    Every class folder of train/ must hold images and test/ no other classes (prepare then checks
    that each class has test images); an unreadable folder stops here with its name.
    """
    root = Path(cfg.root)
    test_dir = _test_dir(root)
    if not (root / "train").is_dir() or test_dir is None:
        raise _missing_data(cfg, "an ImageFolder tree (train/<class>/ and test/<class>/ or val/<class>/)")
    classes = _class_folders(root / "train")
    if not classes:
        raise _missing_data(cfg, "class folders in train/")
    extra = sorted(set(_class_folders(test_dir)) - set(classes))
    if extra:
        raise MaskpruneError(
            f"{test_dir}: class folder(s) {', '.join(extra)} are not in {root / 'train'}; "
            "every class needs training images: add them or remove those folders"
        )
    train = _folder_entries(root / "train", classes, required=True)
    return Listing(tuple(classes), train, _folder_entries(test_dir, classes, required=False))


def _tar_samples(path: Path) -> Iterator[tuple[str, str, int, int, bytes | None]]:
    """(key, extension, data offset, size, the bytes of a `.cls` member) of each member of a WebDataset tar."""
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                key = f"{member.name[: len(member.name) - len(base)]}{stem}"
                payload = tar.extractfile(member).read() if ext == "cls" else None
                yield key, ext.lower(), member.offset_data, member.size, payload
    except (OSError, tarfile.TarError) as err:
        raise MaskpruneError(f"{path}: not a readable tar file ({err}); recreate the shard or remove it") from None


def _webdataset_entries(shards: list[Path]) -> list[Entry]:
    entries = []
    for shard in shards:
        images: dict[str, tuple[int, int, str]] = {}
        labels: dict[str, int] = {}
        for key, ext, offset, size, payload in _tar_samples(shard):
            if payload is not None:
                try:
                    labels[key] = int(payload.decode().strip())
                except ValueError:
                    raise MaskpruneError(f"{shard}: {key}.cls is not an integer label; fix the shard") from None
            elif f".{ext}" in IMAGE_SUFFIXES:
                images[key] = (offset, size, ext)
        unlabelled = sorted(set(images) - set(labels))
        if unlabelled:
            raise MaskpruneError(f"{shard}: sample {unlabelled[0]} has an image but no .cls label; fix the shard")
        entries.extend(Entry(str(shard), off, size, labels[key], ext) for key, (off, size, ext) in images.items())
    return entries


def _webdataset_split(root: Path, names: tuple[str, ...]) -> list[Path]:
    for name in names:
        shards = sorted((root / name).glob("*.tar")) if (root / name).is_dir() else sorted(root.glob(f"{name}-*.tar"))
        if shards:
            return shards
    return []


def list_webdataset(cfg: DataSection) -> Listing:
    """WebDataset shards: `root/train/*.tar` (or `root/train-*.tar`) and `root/test` or `root/val` alike.

    Each sample is `<key>.<image extension>` with `<key>.cls` (its label, an integer); the class
    names come from `root/classes.txt` (one a line, in label order) when it exists.
    """
    root = Path(cfg.root)
    train, test = _webdataset_split(root, ("train",)), _webdataset_split(root, ("test", "val"))
    if not train or not test:
        raise _missing_data(cfg, "WebDataset shards (train/*.tar and test/*.tar or val/*.tar)")
    train_entries, test_entries = _webdataset_entries(train), _webdataset_entries(test)
    highest = max(e.label for e in train_entries + test_entries)
    names_file = root / "classes.txt"
    classes = names_file.read_text().split("\n") if names_file.is_file() else [str(i) for i in range(highest + 1)]
    classes = [name for name in classes if name.strip()]
    if highest >= len(classes) or min(e.label for e in train_entries + test_entries) < 0:
        raise MaskpruneError(f"{root}: label {highest} is out of range 0..{len(classes) - 1} of {names_file}; fix it")
    return Listing(tuple(classes), train_entries, test_entries)


LISTERS = {"imagefolder": list_image_folder, "webdataset": list_webdataset}


def read_entry(entry: Entry) -> bytes:
    """The encoded bytes of one listed image."""
    with open(entry.path, "rb") as handle:
        if entry.offset:
            handle.seek(entry.offset)
        return handle.read(entry.size)


def decode(data: bytes, channels: int = 3) -> Image.Image:
    """Encoded image bytes -> a PIL image in mode RGB (`channels` 3) or L (1), decoded in full.

    16-bit grey images are scaled to 8 bits (65535 -> 255) rather than clipped, alpha is dropped
    and palettes expanded. A truncated or corrupt file raises `UnreadableImage`.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImage(str(err) or type(err).__name__) from None
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        wide = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray(((wide.clip(0, 65535) * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    elif image.mode == "P":
        image = image.convert("RGBA")
    mode = "RGB" if channels == 3 else "L"
    return image if image.mode == mode else image.convert(mode)


def _read_image_folder(listing: Listing) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The listed images decoded into uint8 arrays `[n, 3, h, w]` (the memory storage: one size only)."""
    arrays = []
    for entries in (listing.train, listing.test):
        images = []
        for entry in entries:
            try:
                images.append(np.asarray(decode(read_entry(entry))))
            except (UnreadableImage, OSError) as err:
                raise MaskpruneError(f"{entry.path}: cannot decode ({err}); replace or remove the file") from None
        shapes = sorted({image.shape for image in images})
        if len(shapes) > 1:
            raise MaskpruneError(
                f"images differ in size ({shapes[:3]}...): the memory storage needs one size; "
                "set data.storage: shards (and data.image_size) to crop them in the loader"
            )
        stacked = np.stack(images).transpose(0, 3, 1, 2)
        arrays += [np.ascontiguousarray(stacked), np.asarray([e.label for e in entries], dtype=np.int64)]
    return tuple(arrays)


def decode_listing(listing: Listing) -> RawSplits:
    """A listed ImageFolder or WebDataset source decoded whole (the memory storage; one image size)."""
    train_x, train_y, test_x, test_y = _read_image_folder(listing)
    files = sorted({Path(e.path) for e in listing.train + listing.test})
    return RawSplits(train_x, train_y, test_x, test_y, listing.classes, files)


ARRAY_READERS = {"idx": read_idx_dataset, "cifar10": read_cifar10}


def read_raw(cfg: DataSection) -> RawSplits:
    """The whole dataset as arrays (the memory storage)."""
    if cfg.format in ARRAY_READERS:
        return ARRAY_READERS[cfg.format](cfg)
    return decode_listing(LISTERS[cfg.format](cfg))


def image_shape(entry: Entry) -> tuple[int, int]:
    """(height, width) from an image's header, without decoding its pixels."""
    try:
        with Image.open(io.BytesIO(read_entry(entry))) as image:
            return image.height, image.width
    except (OSError, SyntaxError, ValueError):
        return (0, 0)  # NOTE: unreadable: prepare names it when it decodes the file
