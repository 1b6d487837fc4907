"""Atomic file output: write to a temporary name in the same folder, then rename.

DVC caches whatever a stage leaves behind, so a crash must never leave a half-written file
under an output path. Files that belong together (a model's weights and its meta.json) are written
together: all are renamed into place, or none. A write that finds no room (disk, quota, file-size
limit) is reported under the output's name, not the temporary one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from maskprune.errors import NO_ROOM


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_beside(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # NOTE: mkstemp makes 0600; the output gets the mode a plain open() would give
    return tmp


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of `paths`; rename each over its path only if the block succeeds."""
    targets = [Path(path) for path in paths]
    temps: list[Path] = []
    try:
        temps += [_temporary_beside(target) for target in targets]
        yield temps
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
    except OSError as err:
        if err.errno not in NO_ROOM:
            raise
        named = {str(tmp): target for tmp, target in zip(temps, targets, strict=False)}
        unnamed = targets[0] if len(targets) == 1 else targets[0].parent
        raise OSError(err.errno, err.strerror, str(named.get(err.filename, err.filename or unnamed))) from None
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def json_text(data: Any) -> str:
    """`data` as the JSON every output of the project is written in."""
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def fill(path: Path, text: str) -> None:
    """Write `text` to `path` (not atomically: to a path from `atomic_paths`); its OSError names `path`."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise OSError(err.errno, err.strerror, err.filename or str(path)) from None


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        fill(tmp, text)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    write_text(path, json_text(data))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder; it replaces `path` (whole) only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
