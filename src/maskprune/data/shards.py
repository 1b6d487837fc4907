"""The sharded storage: tar shards in WebDataset's layout, an index per split, written in parallel.

A prepared folder in this storage holds

    meta.json
    train-000000.tar train-000001.tar ... val-000000.tar ... test-000000.tar ...
    train.index.npy val.index.npy test.index.npy

Each sample is two tar members, `<key>.<ext>` (the source's encoded bytes, unchanged; PNG for
array sources) and `<key>.cls` (the label in decimal), so WebDataset, timm's and DALI's readers
read the shards as they are. The index (`INDEX_DTYPE`, one row per sample in shard order) gives
each sample's shard, byte offset, size and label, so a loader reads any sample with one `pread`
and the order of an epoch is free. Samples are shuffled (seeded) before sharding, so readers that
stream shard by shard see the classes mixed too.

Writing is one task per shard, spread over every core. A shard is written to a temporary name,
synced and renamed, and only then recorded as done (`.progress/<shard>.npz`, in the hidden
working folder `.<name>.partial/`); a prepare that is cut off resumes at the first shard not
recorded, as long as its plan (sources, split, shard size) is the same. Memory does not grow with
the number of images: a task holds one image at a time, and the parent only the listing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from maskprune.data.sources import Entry, UnreadableImage, decode, read_entry
from maskprune.errors import MaskpruneError

INDEX_DTYPE = np.dtype([("shard", "<u4"), ("offset", "<u8"), ("size", "<u4"), ("label", "<i8")])
ARRAY_SOURCE = "array:"  # Entry.path of an image held in an array: `array:<split>`, offset = its row
TAR_BLOCK = 512
PROGRESS = ".progress"
LEVELS = np.arange(256, dtype=np.int64)  # the values of a uint8 pixel


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def index_name(split: str) -> str:
    return f"{split}.index.npy"


@dataclass
class ShardTask:
    """One shard to write: its entries in order, and whether to sum the training statistics."""

    split: str
    number: int
    first_key: int
    entries: list[Entry]
    channels: int
    stats: bool
    skip_unreadable: bool

    @property
    def name(self) -> str:
        return shard_name(self.split, self.number)


@dataclass
class ShardResult:
    """What writing one shard produced: index rows, sums for mean/std, skipped files, a digest."""

    rows: np.ndarray  # INDEX_DTYPE without the shard number filled in
    sums: np.ndarray  # int64 [channels]: sum of pixel values
    squares: np.ndarray  # int64 [channels]: sum of squared pixel values
    pixels: int
    sizes: list[list[int]]  # the distinct (height, width) seen, at most two
    skipped: list[str] = field(default_factory=list)
    digest: int = 0  # sum of each sample's sha256 (mod 2**256): independent of order

    def save(self, path: Path) -> None:
        extra = {"pixels": self.pixels, "sizes": self.sizes, "skipped": self.skipped, "digest": str(self.digest)}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, rows=self.rows, sums=self.sums, squares=self.squares, extra=json.dumps(extra))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ShardResult:
        with np.load(path, allow_pickle=False) as saved:
            extra = json.loads(str(saved["extra"]))
            return cls(
                rows=saved["rows"],
                sums=saved["sums"],
                squares=saved["squares"],
                pixels=extra["pixels"],
                sizes=extra["sizes"],
                skipped=extra["skipped"],
                digest=int(extra["digest"]),
            )


def plan_shards(
    splits: dict[str, list[Entry]],
    shard_bytes: int,
    channels: int,
    skip_unreadable: bool,
) -> list[ShardTask]:
    """Cut each split's entries (already in their final order) into shards of about `shard_bytes`.

    Args:
        splits: entries per split name, in the order they are written.
        shard_bytes: the target tar size; a shard holds at least one sample.
        channels: 3 (RGB) or 1 (grey): the mode images are decoded in for checks and statistics.
        skip_unreadable: skip an image that cannot be decoded instead of stopping.
    """
    tasks = []
    for split, entries in splits.items():
        number, start, size = 0, 0, 0
        for position, entry in enumerate(entries):
            member = 3 * TAR_BLOCK + -(-entry.size // TAR_BLOCK) * TAR_BLOCK  # two headers, the data, the label
            if position > start and size + member > shard_bytes:
                tasks.append(
                    ShardTask(
                        split, number, start, entries[start:position], channels, split == "train", skip_unreadable
                    )
                )
                number, start, size = number + 1, position, 0
            size += member
        if len(entries) > start:
            tasks.append(ShardTask(split, number, start, entries[start:], channels, split == "train", skip_unreadable))
    return tasks


_ARRAYS: dict[str, np.ndarray] = {}  # array sources, set by the parent before the workers fork


def set_array_sources(arrays: dict[str, np.ndarray]) -> None:
    _ARRAYS.clear()
    _ARRAYS.update(arrays)


def _encoded(entry: Entry) -> bytes:
    if not entry.path.startswith(ARRAY_SOURCE):
        return read_entry(entry)
    image = _ARRAYS[entry.path[len(ARRAY_SOURCE) :]][entry.offset]  # uint8 [c, h, w]
    buffer = io.BytesIO()
    Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Add `name` with `data` (fixed owner, mode and time, so equal inputs give equal bytes); its data offset."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - -(-len(data) // TAR_BLOCK) * TAR_BLOCK


def write_shard(task: ShardTask, folder: Path) -> ShardResult:
    """Write `folder/<task.name>` (via a temporary name) and its progress record; return the result."""
    rows, skipped, sizes, digest, pixels = [], [], [], 0, 0
    sums = np.zeros(task.channels, np.int64)
    squares = np.zeros(task.channels, np.int64)
    target = folder / task.name
    tmp = folder / f".{task.name}.part"
    with open(tmp, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for position, entry in enumerate(task.entries, start=task.first_key):
                where = entry.path if not entry.path.startswith(ARRAY_SOURCE) else f"{entry.path}[{entry.offset}]"
                try:
                    data = _encoded(entry)
                    decoded = np.asarray(decode(data, task.channels))
                except (UnreadableImage, OSError) as err:
                    if task.skip_unreadable:
                        skipped.append(where)
                        continue
                    raise MaskpruneError(
                        f"{where}: cannot read or decode the image ({err}); replace or remove the file, "
                        "or set data.skip_unreadable: true to skip such files (meta.json lists them)"
                    ) from None
                if task.stats:
                    for channel, values in enumerate(decoded.reshape(-1, task.channels).T):
                        counts = np.bincount(
                            values, minlength=256
                        )  # NOTE: exact integer sums, 3x faster than int64 maths
                        sums[channel] += counts @ LEVELS
                        squares[channel] += counts @ LEVELS**2
                    pixels += decoded.size // task.channels
                if len(sizes) < 2 and list(decoded.shape[:2]) not in sizes:
                    sizes.append(list(decoded.shape[:2]))
                key = f"{position:09d}"
                offset = _member(tar, f"{key}.{entry.ext}", data)
                _member(tar, f"{key}.cls", str(entry.label).encode())
                rows.append((task.number, offset, len(data), entry.label))
                digest += int.from_bytes(hashlib.sha256(data).digest(), "big")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    result = ShardResult(np.array(rows, INDEX_DTYPE), sums, squares, pixels, sizes, skipped, digest % 2**256)
    result.save(folder / PROGRESS / f"{task.name}.npz")
    return result


def finished(task: ShardTask, folder: Path) -> ShardResult | None:
    """The recorded result of a shard written in an earlier (cut-off) run, or None."""
    record = folder / PROGRESS / f"{task.name}.npz"
    if not record.is_file() or not (folder / task.name).is_file():
        return None
    result = ShardResult.load(record)
    last = result.rows[-1] if len(result.rows) else None
    expected = 0 if last is None else int(last["offset"]) + -(-int(last["size"]) // TAR_BLOCK) * TAR_BLOCK
    # NOTE: the label member and the end-of-archive blocks follow the last image; a shorter file is cut off
    return result if (folder / task.name).stat().st_size > expected else None


def write_all(
    tasks: list[ShardTask],
    folder: Path,
    workers: int,
    log: Callable[[str], None],
) -> dict[str, ShardResult]:
    """Write every task not already finished in `folder`, `workers` at a time; results by shard name."""
    (folder / PROGRESS).mkdir(parents=True, exist_ok=True)
    results = {}
    for task in tasks:
        done = finished(task, folder)
        if done is not None:
            results[task.name] = done
    todo = [task for task in tasks if task.name not in results]
    if results:
        log(f"prepare: resuming: {len(results)} of {len(tasks)} shards were written by an earlier run")
    step = max(1, len(todo) // 10)
    if workers <= 1 or len(todo) <= 1:
        for count, task in enumerate(todo, start=1):
            results[task.name] = write_shard(task, folder)
            if count % step == 0 or count == len(todo):
                log(f"prepare: {len(results)}/{len(tasks)} shards written")
        return results
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as pool:
        futures = {pool.submit(write_shard, task, folder): task for task in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                results[futures[future].name] = future.result()
            log(f"prepare: {len(results)}/{len(tasks)} shards written")
    return results


def shard_pattern(split: str, count: int) -> str:
    """The brace pattern WebDataset and timm take for a split's shards."""
    return shard_name(split, 0) if count == 1 else f"{split}-{{{0:06d}..{count - 1:06d}}}.tar"


def finish(folder: Path, tasks: list[ShardTask], results: dict[str, ShardResult]) -> dict[str, np.ndarray]:
    """Write each split's index beside its shards and drop the progress records; the index per split."""
    indexes = {}
    for split in dict.fromkeys(task.split for task in tasks):
        parts = [results[task.name].rows for task in tasks if task.split == split]
        index = np.concatenate(parts) if parts else np.zeros(0, INDEX_DTYPE)
        np.save(folder / index_name(split), index)
        indexes[split] = index
    shutil.rmtree(folder / PROGRESS)
    return indexes


class ShardReader:
    """One split's samples by index row, read with `os.pread`; opens each shard once per process (loader workers too).

    Args:
        folder: the prepared folder.
        split: the split's name.
        index: its `INDEX_DTYPE` rows.
    """

    def __init__(
        self,
        folder: Path,
        split: str,
        index: np.ndarray,
    ) -> None:
        self.folder, self.split, self.index = folder, split, index
        self._files: dict[int, int] = {}
        self._pid = os.getpid()

    def read(self, row_number: int) -> bytes:
        """The encoded bytes of the sample in row `row_number` of the index."""
        if os.getpid() != self._pid:  # NOTE: a forked loader worker opens its own descriptors
            self._files, self._pid = {}, os.getpid()
        row = self.index[row_number]
        shard = int(row["shard"])
        fd = self._files.get(shard)
        if fd is None:
            path = self.folder / shard_name(self.split, shard)
            try:
                fd = self._files[shard] = os.open(path, os.O_RDONLY)
            except OSError as err:
                raise MaskpruneError(f"{path}: cannot open ({err.strerror}); rerun `dvc repro -f prepare`") from None
        data = os.pread(fd, int(row["size"]), int(row["offset"]))
        if len(data) != int(row["size"]):
            raise MaskpruneError(
                f"{self.folder / shard_name(self.split, shard)} is truncated; rerun `dvc repro -f prepare`"
            )
        return data

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "split": self.split, "index": self.index}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["split"], state["index"])
