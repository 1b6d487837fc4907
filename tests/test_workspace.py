"""The workspace copy: what is copied, what is left out, and that the copy is committed."""

from __future__ import annotations

from pathlib import Path

from maskprune.workspace import copy_workspace
from tests.conftest import run


def git(args: list[str], cwd: Path) -> str:
    return run(["git", *args], cwd).stdout


def test_copy_has_code_and_uncommitted_work_but_no_ignored_files_or_collected_results(tmp_path: Path) -> None:
    source = tmp_path / "source"
    files = {
        ".gitignore": "/mlflow.db\n",
        "params.yaml": "seed: 0\n",
        "reports/report.md": "# report\n",
        "reports/seeds/README.md": "seeds\n",
        "reports/seeds/seed-1/params.yaml": "seed: 1\n",
        "reports/seeds/seed-1/models/prune/evit/metrics.json": "{}\n",
        "reports/sweeps/README.md": "sweeps\n",
        "reports/sweeps/mkd20261122-1200.csv": "keep,top1\n",
    }
    for rel, text in files.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(text)
    git(["init", "-q"], source)
    git(["add", "-A"], source)
    git(["-c", "user.email=t@localhost", "-c", "user.name=t", "commit", "-qm", "source"], source)
    (source / "uncommitted.py").write_text("x = 1\n")
    (source / "mlflow.db").write_text("store")

    dest = copy_workspace(source, tmp_path / "dest")

    copied = sorted(git(["ls-files"], dest).split())
    assert copied == [
        ".gitignore",
        "params.yaml",
        "reports/report.md",
        "reports/seeds/README.md",
        "reports/sweeps/README.md",
        "uncommitted.py",
    ]
    assert (dest / "uncommitted.py").read_text() == "x = 1\n"
    assert not (dest / "mlflow.db").exists() and not (dest / "reports" / "seeds" / "seed-1").exists()
    assert git(["status", "--porcelain"], dest) == ""  # everything is committed
