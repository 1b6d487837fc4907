"""Shared fixtures: tiny models, hand-made datasets, and a smoke-profile copy of the repository."""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
import yaml
from filelock import FileLock
from pydantic import BaseModel

from maskprune.config import FINETUNE_VARIANTS, ModelSpec, Params
from maskprune.profile import profile_params
from maskprune.workspace import copy_workspace

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
# smoke: keep 1.0 (the sham arm) and 0.5
PRUNED = tuple(f"{m}-{i}-{k}" for m in ("evit", "dynamicvit") for i in ("full", "masked") for k in ("1.0", "0.5"))
DISTILLED = ("vit-cls_tokens", "vit-scratch", "evit-cls_tokens", "evit-scratch")  # smoke: cls_tokens and the control
PRETRAINED = ("mae-baseline", "mae-mto")  # smoke: MAE (SimMIM runs through DVC in tests/flows/test_sweep.py)
STAGES = (
    "prepare",
    "distill_teacher",
    "teacher",
    *(f"pretrain@{name}" for name in PRETRAINED),
    *(f"finetune@{arm}" for arm in FINETUNE_VARIANTS),
    *(f"prune@{name}" for name in PRUNED),
    *(f"distill@{name}" for name in DISTILLED),
    "evaluate",
    "report",
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist (`make test` runs one test process per core) each process and the stages it
# starts get an equal share of the cores: more threads than cores would make them wait on each other.
PROCESSES = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if PROCESSES > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // PROCESSES)))
torch.set_num_threads(min(2, int(os.environ.get("OMP_NUM_THREADS", 0)) or torch.get_num_threads()))

SectionT = TypeVar("SectionT", bound=BaseModel)


@functools.lru_cache(maxsize=1)
def cpu_params() -> Params:
    """The cpu profile (profiles/cpu.yaml, which sets every key): the recipe that tests build params from.

    Shared between tests, so never change it: take `updated(...)` or `model_dump()` for a changed copy.
    """
    return profile_params("cpu", REPO)


def updated(section: SectionT, **changes: Any) -> SectionT:
    """`section` with `changes`, validated again (`model_copy(update=...)` would skip validation)."""
    return type(section).model_validate({**section.model_dump(), **changes})


def checkpoint_meta(spec: ModelSpec, num_classes: int = 10, **extra: Any) -> dict[str, Any]:
    """A complete meta.json for a one-channel test model of `spec` (what `save_model` needs), plus `extra`."""
    return {
        "model": spec.model_dump(),
        "num_classes": num_classes,
        "in_chans": 1,
        "data": "fashion_mnist",
        "mean": [0.3],
        "std": [0.3],
        "classes": [str(i) for i in range(num_classes)],
        **extra,
    }


def write_idx(path: Path, array: np.ndarray, magic_type: int = 0x08, compress: bool = True) -> Path:
    """Write `array` as an IDX file (the format of MNIST / Fashion-MNIST)."""
    header = bytes([0, 0, magic_type, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


@pytest.fixture
def idx_root(tmp_path: Path) -> Path:
    """A tiny Fashion-MNIST-shaped IDX dataset: 200 train and 50 test 28x28 images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "idx"
    for prefix, n in (("train", 200), ("t10k", 50)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "PREFECT_API"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def run(cmd: list[str], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output if it fails."""
    done = subprocess.run(cmd, cwd=cwd, env=subprocess_env(**extra_env), capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def copy_repo(dest: Path, profile: str | None = "smoke") -> Path:
    """A fresh git copy of the repository's working tree, switched to `profile` (None: as it is)."""
    return copy_workspace(REPO, dest, profile)


NARROW = {
    "pretrain.objectives": ["mae"],
    "prune.inits": ["masked"],
    "prune.keep_rates": [0.5],
    "distill.students": ["evit"],
    "distill.targets": ["cls_tokens"],  # the target report.rules.task_agnostic names
}
# every stage kind, once per matrix item that NARROW keeps, in dvc.yaml's order
NARROW_STAGES = (
    "prepare",
    "distill_teacher",
    "teacher",
    "pretrain@mae-baseline",
    "pretrain@mae-mto",
    *(f"finetune@{arm}" for arm in FINETUNE_VARIANTS),
    "prune@evit-masked-0.5",
    "prune@dynamicvit-masked-0.5",
    "distill@evit-cls_tokens",
    "evaluate",
    "report",
)


def narrow(repo: Path) -> None:
    """A narrower matrix than the smoke profile's (one objective, init, keep rate and student): fewer
    stages to run (NARROW_STAGES)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in NARROW.items():
        section, name = key.split(".")
        params[section][name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def narrow_sets() -> list[str]:
    """NARROW as `--set KEY=VALUE` items (YAML flow lists, no spaces)."""
    return [f"{key}=[{','.join(str(item) for item in value)}]" for key, value in NARROW.items()]


def copy_run(smoke_run: Path, dest: Path) -> Path:
    """A private copy of the reproduced smoke run (`smoke_run` or `smoke_repo`: its git state, outputs and
    DVC cache, without its MLflow store or training checkpoints), for tests that change it."""
    shutil.copytree(
        smoke_run,
        dest,
        symlinks=True,
        ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts", "checkpoints"),
    )
    run(["git", "reset", "-q", "--hard"], dest)  # NOTE: undo what earlier tests changed in smoke_repo
    return dest


def uses_smoke_repo(item: pytest.Item) -> bool:
    return "smoke_repo" in item.fixturenames


@pytest.hookimpl(tryfirst=True)  # NOTE: before pytest-xdist's hook, which reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order and group the tests for `make test`'s processes (pytest-xdist: --dist loadgroup, in this order).

    Every test that uses `smoke_repo` is one group, so one process runs them in order, with
    tests/test_dvc_repro.py's first: they check the shared smoke run as `dvc repro` left it, before the
    sweep tests add experiments, sweep tables and MLflow runs to it. Every other module is a group of
    its own (its module-scoped services start once). Modules that need the smoke run go last, so that
    the other processes run the rest while one builds it.
    """
    late = {item.path for item in items if {"smoke_run", "smoke_repo"} & set(item.fixturenames)}

    def rank(item: pytest.Item) -> int:
        if uses_smoke_repo(item) and item.path.name == "test_dvc_repro.py":
            return 0
        return 2 if item.path in late else 1

    items.sort(key=rank)
    for item in items:
        group = "smoke_repo" if uses_smoke_repo(item) else str(item.path.relative_to(REPO))
        item.add_marker(pytest.mark.xdist_group(group))


def repro_log(repo: Path) -> Path:
    """Where `smoke_repo` keeps the output of its `dvc repro` (beside the repository, outside git)."""
    return repo.parent / "repro.log"


def build_smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Once per test session, in a folder every test process sees: a copy of the repository set to the
    smoke profile, after one `dvc repro`, committed (`repo/`), and a copy of it as it was then without
    its MLflow store or checkpoints (`run/repo`). Returns that folder.

    NOTE: committed as a user commits after `dvc repro`: `dvc exp run --temp` starts from git, so
    uncommitted outputs (dvc.lock, metrics, histories) would make experiments rerun their stages.
    """
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "smoke"
    root.mkdir(exist_ok=True)
    with FileLock(root / "build.lock"):
        if (root / "failed").exists():
            pytest.fail(f"the smoke run failed to build in another test process:\n{(root / 'failed').read_text()}")
        if not (root / "built").exists():
            try:
                repo = copy_repo(root / "repo")
                done = run(["dvc", "repro"], repo)
                repro_log(repo).write_text(done.stdout + done.stderr)
                run(["git", "add", "-A"], repo)
                run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "dvc repro"], repo)
                copy_run(repo, root / "run" / "repo")
                shutil.copy2(repro_log(repo), root / "run")
            except BaseException as error:
                (root / "failed").write_text(str(error)[-3000:])
                raise
            (root / "built").touch()
    return root


def claim_for_one_process(claim: Path, process: str) -> None:
    """Fail unless `process` is the first, or the same, test process to claim `claim` (a file)."""
    with FileLock(f"{claim}.lock"):
        if not claim.exists():
            claim.write_text(process)
    if claim.read_text() != process:
        pytest.fail(
            f"{claim.stem} is claimed by two test processes ({claim.read_text()} and {process}): the tests that "
            "change smoke_repo must be one xdist group (pytest 9.2 drops the groups: pytest-dev/pytest-xdist#1386)"
        )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke profile's `dvc repro`, committed, as it was when it ended: shared by every test process
    and never changed (read it, or take a `copy_run` to change)."""
    return build_smoke_run(tmp_path_factory) / "run" / "repo"


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke run with its MLflow store, which the tests that use it read and change in place, in
    one process and in order (see pytest_collection_modifyitems)."""
    root = build_smoke_run(tmp_path_factory)
    claim_for_one_process(root / "changed-by", os.environ.get("PYTEST_XDIST_WORKER", "main"))
    return root / "repo"


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
