"""A shared MLflow tracking server on PostgreSQL (Debian's package) with a separate artifact store.

The server runs as the README says a team would run it: `mlflow server --backend-store-uri
postgresql://... --artifacts-destination ... --serve-artifacts` on 127.0.0.1; stages reach it
through MLFLOW_TRACKING_URI alone, with no code change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from mlflow.tracking import MlflowClient

from maskprune.config import TrackingSection
from maskprune.tracking.runs import PARENT_ENV, Tracker
from tests.conftest import VENV_BIN, run, subprocess_env
from tests.services import free_port, http_ok, require, service

pytestmark = pytest.mark.integration


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    binary = str(found[-1]) if found else shutil.which("postgres") or ""
    return Path(require(binary or "postgres", "apt-get install postgresql (.ci/run installs it)")).parent


def pg_ready(bin_dir: Path, port: int) -> bool:
    done = subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
    return done.returncode == 0


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (as user postgres when the tests run as root)."""
    bin_dir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="maskprune-pg-"))  # NOTE: outside pytest's root-only 0700 tmp
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    port = free_port()
    try:
        init = subprocess.run(
            [
                *as_user,
                str(bin_dir / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            capture_output=True,
            text=True,
        )
        if init.returncode != 0:
            pytest.fail(f"initdb failed: {init.stderr[-1500:]}")
        cmd = [
            *as_user,
            str(bin_dir / "postgres"),
            "-D",
            str(root / "data"),
            "-p",
            str(port),
            "-k",
            str(root),
            "-c",
            "listen_addresses=127.0.0.1",
        ]
        with service("PostgreSQL", cmd, lambda: pg_ready(bin_dir, port), root / "postgres.log"):
            created = subprocess.run(
                [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"],
                capture_output=True,
                text=True,
            )
            if created.returncode != 0:
                pytest.fail(f"createdb failed: {created.stderr}")
            yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-pg")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [
        str(Path(VENV_BIN) / "mlflow"),
        "server",
        "--backend-store-uri",
        postgres,
        "--serve-artifacts",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with service(
        "mlflow server on PostgreSQL",
        cmd,
        http_ok(f"{uri}/health"),
        root / "server.log",
        env=subprocess_env(),
    ):
        yield uri


def test_stages_log_to_the_shared_server_nested_under_one_parent(
    mlflow_on_postgres: str, postgres: str, smoke_repo: Path
) -> None:
    tracker = Tracker(TrackingSection(uri=mlflow_on_postgres), smoke_repo)
    parent = tracker.start_pipeline_run(source="ops test")
    for stage in (["stages.teacher"], ["stages.prune", "evit-masked-0.5"]):
        run(
            [sys.executable, "-m", *stage, "--log-only"],
            smoke_repo,
            PYTHONPATH="src",
            MLFLOW_TRACKING_URI=mlflow_on_postgres,
            **{PARENT_ENV: parent},
        )
    tracker.finish(parent)
    client = MlflowClient(tracking_uri=mlflow_on_postgres)
    children = client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    by_stage = {r.data.tags["maskprune.stage"]: r for r in children}
    assert sorted(by_stage) == ["prune@evit-masked-0.5", "teacher"]
    teacher = by_stage["teacher"]
    assert [m.step for m in client.get_metric_history(teacher.info.run_id, "val_top1")] == [1, 2]
    assert (
        teacher.data.tags["seed"] == "0" and by_stage["prune@evit-masked-0.5"].data.tags["variant"] == "evit-masked-0.5"
    )
    artifacts = {a.path for a in client.list_artifacts(teacher.info.run_id)}
    assert {"model.safetensors", "metrics.json", "history.csv"} <= artifacts
    local = client.download_artifacts(teacher.info.run_id, "metrics.json")
    assert Path(local).read_bytes() == (smoke_repo / "models" / "teacher" / "metrics.json").read_bytes()
    with psycopg.connect(postgres) as conn:  # the runs really live in PostgreSQL
        count = conn.execute("SELECT count(*) FROM runs WHERE run_uuid = ANY(%s)", ([r.info.run_id for r in children],))
        assert count.fetchone()[0] == 2


def test_a_wrong_tracking_uri_is_one_line_naming_the_variable_without_the_password(
    postgres: str, smoke_repo: Path
) -> None:
    wrong = postgres.replace("postgres@", "postgres:hunter2@").rsplit("/", 1)[0] + "/no_such_database"
    done = subprocess.run(
        [sys.executable, "-m", "stages.teacher", "--log-only"],
        cwd=smoke_repo,
        capture_output=True,
        text=True,
        env=subprocess_env(PYTHONPATH="src", MLFLOW_TRACKING_URI=wrong),
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("maskprune: error")]
    assert len(errors) == 1 and "Traceback" not in done.stderr + done.stdout
    assert errors[0].startswith("maskprune: error: tracking to postgresql://postgres:***@")
    assert "the MLFLOW_TRACKING_URI environment variable" in errors[0] and "hunter2" not in done.stderr
    assert "--log-only" in errors[0]
