"""Atomic output: all or nothing, with the permissions an ordinary write would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from maskprune import atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_umask_mode_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "report.md", "# report\n")
        with atomic.atomic_dir(tmp_path / "figures") as folder:
            (folder / "a.png").write_bytes(b"png")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").read_text() == "# report\n"
    assert mode(tmp_path / "report.md") == 0o644 and mode(tmp_path / "figures") == 0o755


def test_a_failed_write_leaves_the_old_output_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic.write_json(target, {"top1": 0.5})
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text('{"top1": ')
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "top1": 0.5\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
