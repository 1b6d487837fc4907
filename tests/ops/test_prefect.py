"""A Prefect server and a process worker on 127.0.0.1: the checked-in deployments, run through the worker,
and the `gpu` tag concurrency limit that keeps two GPU stages off one GPU.

The server is the session's `prefect_test_harness` server (a real server process with its own
database); the CLI, the worker and the flows reach it through PREFECT_API_URL like any client.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient

from flows import GPU_TAG
from tests.conftest import REPO, VENV_BIN, copy_repo, narrow, run, subprocess_env
from tests.services import service

pytestmark = pytest.mark.integration
PREFECT = str(Path(VENV_BIN) / "prefect")


@pytest.fixture(scope="module")
def prefect_server(prefect_harness: None) -> dict[str, str]:
    """The environment that points CLI processes at the session's Prefect server (a real server process)."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_HOME": os.environ["PREFECT_HOME"]}


def worker_online(api: str, pool: str) -> bool:
    try:
        found = requests.post(f"{api}/work_pools/{pool}/workers/filter", json={}, timeout=2)
        return found.ok and bool(found.json())
    except requests.RequestException:
        return False


def test_checked_in_deployments_register_and_the_pipeline_runs_through_a_process_worker(
    prefect_server: dict[str, str], tmp_path: Path
) -> None:
    repo = copy_repo(tmp_path / "repo")
    narrow(repo)
    env = {**prefect_server, "PWD": str(repo)}
    run([PREFECT, "work-pool", "create", "maskprune", "--type", "process"], repo, **env)
    deployed = run([PREFECT, "--no-prompt", "deploy", "--all"], repo, **env).stdout
    for name in (
        "maskprune-pipeline/nightly",
        "maskprune-seeds/seeds",
        "maskprune-maskedkd-sweep/maskedkd",
        "maskprune-mto-ablation/mto-ablation",
    ):
        assert name in deployed
    nightly = json.loads(
        run([PREFECT, "deployment", "inspect", "maskprune-pipeline/nightly", "-o", "json"], repo, **env).stdout
    )
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 3 * * *" and nightly["work_pool_name"] == "maskprune"
    assert nightly["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(repo)
    api = env["PREFECT_API_URL"]
    cmd = [PREFECT, "worker", "start", "--pool", "maskprune", "--type", "process"]
    with service(
        "Prefect worker",
        cmd,
        lambda: worker_online(api, "maskprune"),
        tmp_path / "worker.log",
        env=subprocess_env(**env),
        cwd=tmp_path,
    ):
        out = run(
            [
                PREFECT,
                "deployment",
                "run",
                "maskprune-pipeline/nightly",
                "--param",
                "stage=prepare",
                "--watch",
                "--watch-timeout",
                "600",
            ],
            repo,
            **env,
        ).stdout
    assert "Completed" in out, out[-2000:]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]  # the worker ran it through DVC, in the repo
    assert lock["prepare"]["params"]["params.yaml"]["data"]["train_limit"] == 1200  # the smoke profile's, just run
    assert (repo / "data" / "prepared" / "fashion_mnist" / "meta.json").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("maskprune")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`maskprune.source` = 'prefect'")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert [r.data.tags["maskprune.stage"] for r in children] == ["prepare"]
    assert {r.data.tags["prefect.flow_run_id"] for r in children} == {parent.data.tags["prefect.flow_run_id"]}


def test_gpu_tagged_tasks_take_the_gpu_one_at_a_time(prefect_server: dict[str, str], tmp_path: Path) -> None:
    run([PREFECT, "concurrency-limit", "create", GPU_TAG, "1"], tmp_path, **prefect_server)
    script = tmp_path / "two_tasks_each.py"
    script.write_text(f"""
import json, time
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

def hold() -> list[float]:
    start = time.time()
    time.sleep(2)
    return [start, time.time()]

gpu, cpu = task(tags=[{GPU_TAG!r}])(hold), task(tags=["cpu"])(hold)

@flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
def both() -> dict:
    on_gpu, on_cpu = [gpu.submit() for _ in range(2)], [cpu.submit() for _ in range(2)]
    return {{"gpu": [f.result() for f in on_gpu], "cpu": [f.result() for f in on_cpu]}}

print(json.dumps(both()))
""")
    out = run([sys.executable, str(script)], REPO, **prefect_server).stdout
    spans = json.loads(out.strip().splitlines()[-1])
    (a_start, a_end), (b_start, b_end) = sorted(spans["gpu"])
    assert b_start >= a_end - 0.05, f"two gpu tasks overlapped: {spans['gpu']}"
    (c_start, c_end), (d_start, d_end) = sorted(spans["cpu"])
    assert d_start < c_end, "untagged tasks should run side by side"
