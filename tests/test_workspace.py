"""The workspace copy: what is copied, what is left out, and that the copy is committed."""

from __future__ import annotations

from pathlib import Path

import yaml

from maskprune.workspace import copy_workspace, update_workspace
from tests.conftest import run


def git(args: list[str], cwd: Path) -> str:
    return run(["git", *args], cwd).stdout


def committed_repo(source: Path, files: dict[str, str]) -> None:
    """A git repository at `source` holding `files` (path -> text), committed."""
    for rel, text in files.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(text)
    git(["init", "-q"], source)
    git(["add", "-A"], source)
    git(["-c", "user.email=t@localhost", "-c", "user.name=t", "commit", "-qm", "source"], source)


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
    committed_repo(source, files)
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


def test_an_update_takes_new_code_and_params_but_keeps_what_dvc_made_in_the_copy(tmp_path: Path) -> None:
    source = tmp_path / "source"
    files = {
        "params.yaml": "seed: 0\n",
        "src/code.py": "x = 1\n",
        "dvc.lock": "stages:\n  train:\n    outs:\n    - path: models/m/metrics.json\n    - path: data/prepared\n",
        "models/m/metrics.json": '{"top1": 0.5}\n',
        "data/prepared/meta.json": "{}\n",
    }
    committed_repo(source, files)
    dest = copy_workspace(source, tmp_path / "dest")
    (dest / "models/m/metrics.json").write_text('{"top1": 0.9}\n')  # the copy's own run
    (dest / "dvc.lock").write_text("stages:\n  train:\n    outs:\n    - path: models/m/metrics.json\n")
    (source / "src/code.py").write_text("x = 2\n")
    (source / "params.yaml").write_text("seed: 0\nnew: 1\n")
    (source / "data/prepared/meta.json").write_text('{"changed": true}\n')

    update_workspace(source, dest)

    assert (dest / "src/code.py").read_text() == "x = 2\n" and (dest / "params.yaml").read_text() == "seed: 0\nnew: 1\n"
    assert (dest / "models/m/metrics.json").read_text() == '{"top1": 0.9}\n'  # an output of the copy's lock
    assert (dest / "dvc.lock").read_text().count("path:") == 1
    assert (dest / "data/prepared/meta.json").read_text() == '{"changed": true}\n'  # not in the copy's lock


def test_an_update_takes_the_shared_stages_lock_entries_and_outputs_from_the_source(tmp_path: Path) -> None:
    # the copy's teacher was recorded before a code change the source's lock records (`dvc commit`):
    # kept, DVC in the copy would train the teacher again
    source = tmp_path / "source"
    lock = (
        "stages:\n  teacher:\n    deps:\n    - path: src/code.py\n      md5: {md5}\n"
        "    outs:\n    - path: models/teacher/metrics.json\n"
        "  student:\n    outs:\n    - path: models/student/metrics.json\n"
    )
    files = {
        "src/code.py": "x = 1\n",
        "dvc.lock": lock.format(md5="old"),
        "models/teacher/metrics.json": '{"teacher": 1}\n',
        "models/student/metrics.json": '{"student": 0}\n',
    }
    committed_repo(source, files)
    dest = copy_workspace(source, tmp_path / "dest")
    (dest / "models/student/metrics.json").write_text('{"student": 1}\n')  # the copy's own run
    (dest / "models/teacher/metrics.json").write_text('{"teacher": 2}\n')
    (source / "src/code.py").write_text("x = 2\n")
    (source / "dvc.lock").write_text(lock.format(md5="new"))

    update_workspace(source, dest, shared=["teacher", "prepare"])

    stages = yaml.safe_load((dest / "dvc.lock").read_text())["stages"]
    assert stages["teacher"]["deps"][0]["md5"] == "new"  # the source's entry
    assert stages["student"] == {"outs": [{"path": "models/student/metrics.json"}]}  # the copy's own
    assert (dest / "models/teacher/metrics.json").read_text() == '{"teacher": 1}\n'  # the source's output
    assert (dest / "models/student/metrics.json").read_text() == '{"student": 1}\n'
    # in step with the source: left as DVC wrote it (the seeds flow collects a seed again when its lock changes)
    in_step = lock.format(md5="new") + "# a rewrite drops this line\n"
    (dest / "dvc.lock").write_text(in_step)
    update_workspace(source, dest, shared=["teacher"])
    assert (dest / "dvc.lock").read_text() == in_step
