"""Git and DVC provenance: the commit, the dependency hashes and the `dvc` process a stage runs under.

Tracking tags runs with these; the benchmarks record the commit they measured.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import yaml


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


def dvc_lock_tags(stage: str, root: Path) -> dict[str, str]:
    """`dvc.dep.<path>.md5` for each dependency of `stage` that dvc.lock records a hash for."""
    try:
        stages = yaml.safe_load((root / "dvc.yaml").read_text()).get("stages", {})
        lock = yaml.safe_load((root / "dvc.lock").read_text()).get("stages", {})
    except (OSError, AttributeError, yaml.YAMLError):
        return {}
    hashes = {}
    for entry in lock.values():
        for item in [*entry.get("deps", []), *entry.get("outs", [])]:
            if "md5" in item:
                hashes[item["path"]] = item["md5"]
    name, _, _ = stage.partition("@")  # NOTE: 'finetune@masked' is an item of a foreach or matrix
    definition = stages.get(stage) or stages.get(name, {})
    deps = definition.get("do", definition).get("deps", [])  # templated '${item...}' deps match no hash
    return {f"dvc.dep.{dep}.md5": hashes[dep] for dep in deps if isinstance(dep, str) and dep in hashes}


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
