"""A fresh copy of the repository's working tree as its own git repository (for DVC runs apart).

Copies the tracked files and the untracked ones git does not ignore (so uncommitted work is
included and no store or venv is), optionally switches the profile, and commits everything, which
DVC's experiment commands need. Results collected from the source's experiments (other seeds,
sweeps) are left out: they describe the source's runs, not the copy's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

from maskprune.layout import SEEDS_DIR, SWEEPS_DIR

# NOTE: where flows.seeds and the sweep flows write
COLLECTED_RESULTS = (f"{SEEDS_DIR.as_posix()}/seed-*", f"{SWEEPS_DIR.as_posix()}/*.csv")


def _git(args: list[str], cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip()}")
    return done.stdout


def copy_workspace(source: Path, dest: Path, profile: str | None = None) -> Path:
    """Copy `source`'s working tree into `dest` (a new git repo, one commit); returns `dest`."""
    listed = _git(["ls-files", "--cached", "--others", "--exclude-standard"], source).splitlines()
    for rel in listed:
        src = source / rel
        if src.is_file() and not any(fnmatch(rel, pattern) for pattern in COLLECTED_RESULTS):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if profile:
        subprocess.run([sys.executable, "-m", "maskprune.profile", profile], cwd=dest, check=True, capture_output=True)
    _git(["init", "-q"], dest)
    _git(["add", "-A"], dest)
    _git(
        [
            "-c",
            "user.email=maskprune@localhost",
            "-c",
            "user.name=maskprune",
            "commit",
            "-qm",
            "workspace copy",
        ],
        dest,
    )
    return dest
