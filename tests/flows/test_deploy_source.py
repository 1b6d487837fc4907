"""The commit a `gpus` deployment pins: refused while workers could not fetch it."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.deploy_source import deployable_commit, remote_url
from maskprune.errors import MaskpruneError
from tests.conftest import run

GIT_ID = ["-c", "user.email=t@localhost", "-c", "user.name=t"]


def test_only_a_clean_commit_the_remote_holds_is_deployable(tmp_path: Path) -> None:
    repo, origin = tmp_path / "repo", tmp_path / "origin.git"
    run(["git", "init", "-q", str(repo)], tmp_path)
    (repo / "params.yaml").write_text("seed: 0\n")
    run(["git", "add", "params.yaml"], repo)
    run(["git", *GIT_ID, "commit", "-qm", "one"], repo)
    with pytest.raises(MaskpruneError, match="no git remote 'origin' for workers to clone; add one with"):
        deployable_commit(repo)
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    assert remote_url(repo) == str(origin)
    with pytest.raises(MaskpruneError, match=r"origin does not have commit [0-9a-f]{12} .*`git push` it first"):
        deployable_commit(repo)
    run(["git", "push", "-q", "origin", "HEAD:main"], repo)
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert deployable_commit(repo) == head
    (repo / "params.yaml").write_text("seed: 1\n")
    with pytest.raises(MaskpruneError, match="uncommitted changes that no worker would see; commit and push them"):
        deployable_commit(repo)
