"""What a deployment on other machines pins: this repository's git remote and its commit.

    python -m flows.deploy_source remote   # the URL of `origin`
    python -m flows.deploy_source commit   # HEAD, once the tree is clean and `origin` has it

prefect.yaml's `gpus` deployment runs both as build steps, so its pull steps clone exactly the
commit it was deployed from. A worker elsewhere can only fetch what the remote holds, and
uncommitted changes would never reach it: both are refused in one line at deploy time.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from maskprune.errors import MaskpruneError, exit_on_user_error

REMOTE = "origin"


def git(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def remote_url(root: Path) -> str:
    found = git(["remote", "get-url", REMOTE], root)
    if found.returncode:
        raise MaskpruneError(
            f"this repository has no git remote {REMOTE!r} for workers to clone; add one with "
            f"`git remote add {REMOTE} <url>` and push"
        )
    return found.stdout.strip()


def deployable_commit(root: Path) -> str:
    """HEAD, if the tree is clean and the remote holds it."""
    remote_url(root)
    if git(["status", "--porcelain", "--untracked-files=no"], root).stdout.strip():
        raise MaskpruneError("the working tree has uncommitted changes that no worker would see; commit and push them")
    head = git(["rev-parse", "HEAD"], root).stdout.strip()
    git(["fetch", "-q", REMOTE], root)
    if not git(["branch", "-r", "--contains", head], root).stdout.strip():
        raise MaskpruneError(f"{REMOTE} does not have commit {head[:12]} that workers would clone; `git push` it first")
    return head


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy_source", description=__doc__)
    parser.add_argument("what", choices=["remote", "commit"])
    args = parser.parse_args(argv)
    root = Path.cwd()
    print(remote_url(root) if args.what == "remote" else deployable_commit(root))


if __name__ == "__main__":
    main()
