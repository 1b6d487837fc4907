"""The DVC remote: where `dvc push` stores the outputs and `dvc pull` brings them into a clone.

    python -m maskprune.remote      # (make pull) dvc pull, once the default remote is known to exist

A fresh clone holds git's files only: the code, params, dvc.lock, the committed results (reports/,
metrics/, plots/) and the teachers. `dvc status` lists every other output (prepared data, students)
as deleted and not in cache until `dvc pull` brings it from the remote or `dvc repro` (make run)
rebuilds it. The default remote is a folder beside the repository (.dvc/config), which exists only
where someone has run `dvc push`; a team sets its own (docs/operations.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from maskprune.config import find_repo_root
from maskprune.errors import MaskpruneError, exit_on_user_error


def remote_problem(root: Path) -> str | None:
    """Why `dvc pull` cannot work in `root` (no default remote, or a local one that does not exist), else None."""
    from dvc.repo import Repo

    config = Repo(str(root)).config
    name = config["core"].get("remote")
    if not name:
        return (
            "this repository has no default DVC remote; add your team's with `dvc remote add -d <name> <url>` "
            "(docs/operations.md), or build the outputs here with `make run`"
        )
    url = config["remote"][name]["url"]
    if "://" not in url and not Path(url).is_dir():
        return (
            f"the DVC remote {name!r} ({url}) does not exist: no one has run `dvc push` to it; build the outputs "
            "here with `make run`, or point the remote at your team's store (docs/operations.md)"
        )
    return None


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m maskprune.remote", description=__doc__.split("\n")[0]).parse_args(argv)
    root = find_repo_root()
    problem = remote_problem(root)
    if problem:
        raise MaskpruneError(problem)
    raise SystemExit(subprocess.run([sys.executable, "-m", "dvc", "pull"], cwd=root).returncode)


if __name__ == "__main__":
    main()
