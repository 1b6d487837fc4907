"""A fresh copy of the repository's working tree as its own git repository (for DVC runs apart).

Copies the tracked files and the untracked ones git does not ignore (so uncommitted work is
included and no store or venv is), optionally switches the profile, and commits everything, which
DVC's experiment commands need. Results collected from the source's experiments (other seeds,
sweeps) are left out: they describe the source's runs, not the copy's. An earlier copy can take
the source's code and params again while it keeps its own DVC results (`update_workspace`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Collection
from fnmatch import fnmatch
from pathlib import Path

import yaml

from maskprune.dvc_yaml import LOCK_FILE, read_lock
from maskprune.layout import SEEDS_DIR, SWEEPS_DIR

# NOTE: where flows.seeds and the sweep flows write
COLLECTED_RESULTS = (f"{SEEDS_DIR.as_posix()}/seed-*", f"{SWEEPS_DIR.as_posix()}/*.csv")


def _git(args: list[str], cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip()}")
    return done.stdout


def _copy_files(source: Path, dest: Path, keep: Callable[[str], bool] = lambda rel: False) -> None:
    """Copy the files git lists in `source` (tracked, and untracked but not ignored) into `dest`,
    except collected results and the paths `keep` says `dest` keeps as they are."""
    listed = _git(["ls-files", "--cached", "--others", "--exclude-standard"], source).splitlines()
    for rel in listed:
        src = source / rel
        if src.is_file() and not keep(rel) and not any(fnmatch(rel, pattern) for pattern in COLLECTED_RESULTS):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def copy_workspace(source: Path, dest: Path, profile: str | None = None) -> Path:
    """Copy `source`'s working tree into `dest` (a new git repo, one commit); returns `dest`."""
    _copy_files(source, dest)
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


def stage_outputs(lock: dict, stages: Collection[str]) -> list[str]:
    """The output paths that the parsed dvc.lock `lock` records for `stages`."""
    recorded = lock.get("stages", {})
    return [out["path"] for name in stages for out in recorded.get(name, {}).get("outs", [])]


def update_workspace(source: Path, dest: Path, shared: Collection[str] = ()) -> None:
    """Copy `source`'s files into the earlier copy `dest` again, keeping what DVC made there: its
    dvc.lock and every output that lock records. DVC in `dest` then reruns only what changed.

    The `shared` stages are the exception: `dest` takes their dvc.lock entries and their outputs
    from `source`, as a fresh copy does. Their outputs are the source's by design (a seed's data split
    and teachers), and a code change recorded in the source's lock since (`dvc commit`) would
    otherwise make DVC in `dest` train them again. Outputs that git ignores (DVC's cache holds them)
    then need `dvc checkout` in `dest`.
    """
    ours, theirs = read_lock(dest), read_lock(source)
    taken = {name: entry for name, entry in theirs.get("stages", {}).items() if name in shared}
    outputs = stage_outputs(ours, set(ours.get("stages", {})) - set(taken))

    def made_by_dvc(rel: str) -> bool:
        return rel == LOCK_FILE or any(rel == out or rel.startswith(f"{out}/") for out in outputs)

    _copy_files(source, dest, keep=made_by_dvc)
    if any(ours.get("stages", {}).get(name) != entry for name, entry in taken.items()):
        # NOTE: rewritten only when it differs: the seeds flow collects a seed again when its lock changes
        ours["stages"] = {**ours.get("stages", {}), **taken}
        (dest / LOCK_FILE).write_text(yaml.safe_dump(ours, sort_keys=False))
