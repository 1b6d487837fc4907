"""Git and DVC provenance: the commit, the dependency hashes and the `dvc` process a stage runs under.

Tracking tags runs with these (and logs the hashes as an artifact); the benchmarks record the commit they measured.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from pathlib import Path

import yaml

from maskprune.config import PARAMS_FILE
from maskprune.dvc_yaml import expand
from maskprune.errors import MaskpruneError


def git_tags(root: Path) -> dict[str, str]:
    """The commit of the git checkout at `root` and whether it is dirty; {} outside git."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        except OSError:  # no git on this machine (a bare GPU machine)
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"mlflow.source.git.commit": commit, "git.commit": commit, "git.dirty": str(dirty).lower()}


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_md5(path: Path) -> str:
    """The md5 DVC 3 records for `path`: of a file, its bytes'; of a folder, that of the JSON list of
    its files' {md5, relpath} sorted by relpath, with '.dir' appended (dvc_data's `Tree.digest`)."""
    if path.is_file():
        return file_md5(path)
    entries = sorted(
        ({"md5": file_md5(f), "relpath": f.relative_to(path).as_posix()} for f in path.rglob("*") if f.is_file()),
        key=lambda entry: entry["relpath"],
    )
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def dvc_dep_hashes(stage: str, root: Path) -> dict[str, str]:
    """{path: md5} for each path `stage` depends on, hashed now as DVC hashes it ({} outside a DVC stage).

    NOTE: computed, not read from dvc.lock: a stage runs before DVC writes its lock entry, so the
    lock still holds the previous run's hashes (or none).
    """
    try:
        dvc = yaml.safe_load((root / "dvc.yaml").read_text())
        params = yaml.safe_load((root / PARAMS_FILE).read_text())
        found = next((s for s in expand(dvc, params) if s.name == stage), None)
    except (OSError, AttributeError, KeyError, yaml.YAMLError, MaskpruneError):
        return {}
    if found is None:
        return {}
    return {dep: dvc_md5(root / dep) for dep in found.deps if (root / dep).exists()}


def dvc_invocation_key() -> str | None:
    """'host:pid:start' of the `dvc` process this stage runs under, or None outside DVC."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        proc = psutil.Process().parent()
        while proc is not None:
            cmdline = proc.cmdline()
            if any(Path(part).name == "dvc" for part in cmdline[:2]) or cmdline[1:3] == ["-m", "dvc"]:
                return f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.3f}"
            proc = proc.parent()
    except (psutil.Error, IndexError):
        return None
    return None
