"""A Prefect server and process workers on 127.0.0.1: the checked-in deployments, run through a worker
in this repository and, for `gpus`, in a clone of the deployed commit on another "machine"; the GPU
slots that a task holds, one per training process.

The server is the session's `prefect_test_harness` server (a real server process with its own
database); the CLI, the worker and the flows reach it through PREFECT_API_URL like any client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient

from flows.gpu_slots import gpu_limit
from tests.conftest import REPO, VENV_BIN, copy_repo, copy_run, narrow, run, subprocess_env
from tests.services import service

pytestmark = pytest.mark.integration
PREFECT = str(Path(VENV_BIN) / "prefect")


@pytest.fixture(scope="module")
def prefect_server(prefect_harness: None) -> dict[str, str]:
    """The environment that points CLI processes at the session's Prefect server (a real server process)."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_HOME": os.environ["PREFECT_HOME"]}


@pytest.fixture(scope="module")
def two_gpus(prefect_server: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """This machine's GPU limit, with 2 slots (as `make worker GPUS=2` sets it)."""
    name = gpu_limit()
    run([PREFECT, "gcl", "create", name, "--limit", "2"], tmp_path_factory.getbasetemp(), **prefect_server)
    return name


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
    names = ["nightly", "seeds", "maskedkd", "mto-ablation"]  # `make deploy`'s; `gpus` has a test of its own
    deployed = run([PREFECT, "--no-prompt", "deploy", *(f"--name={name}" for name in names)], repo, **env).stdout
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


def test_a_task_holds_one_gpu_slot_per_process(prefect_server: dict[str, str], two_gpus: str, tmp_path: Path) -> None:
    script = tmp_path / "tasks_on_two_gpus.py"
    script.write_text("""
import json, time
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner
from flows.gpu_slots import holding_gpus

@task
def hold(gpus: int, seconds: float = 2) -> list[float]:
    with holding_gpus(gpus):
        start = time.time()
        time.sleep(seconds)
        return [start, time.time()]

@flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
def mixed() -> dict:
    # NOTE: long enough that a slot request the server asked to retry (about 2 s later) still overlaps
    ones = [hold.submit(1, 8) for _ in range(2)]
    ones = [f.result() for f in ones]
    two, one = hold.submit(2), hold.submit(1)
    return {"ones": ones, "two": two.result(), "one": one.result()}

try:
    print(json.dumps(mixed()))
except Exception as err:
    print(json.dumps({"error": str(err)}))
""")
    spans = json.loads(
        run([sys.executable, str(script)], REPO, PYTHONPATH=str(REPO), **prefect_server).stdout.strip().splitlines()[-1]
    )
    overlap = lambda a, b: a[0] < b[1] - 0.05 and b[0] < a[1] - 0.05  # noqa: E731
    assert overlap(*spans["ones"]), f"two 1-GPU tasks fit 2 slots at once: {spans}"
    assert not overlap(spans["two"], spans["one"]), f"2 GPUs and 1 more out of 2: {spans}"
    # more processes than the machine's slots: refused in one line, naming both and the fix
    script.write_text(script.read_text().replace("hold.submit(2)", "hold.submit(3)"))
    refused = json.loads(
        run([sys.executable, str(script)], REPO, PYTHONPATH=str(REPO), **prefect_server).stdout.strip().splitlines()[-1]
    )
    assert refused["error"] == (
        f"this stage starts 3 training processes but the Prefect limit {two_gpus} has 2 GPU slots; "
        "lower runtime.nproc_per_node or restart this machine's worker with `make worker GPUS=3`"
    )


def test_the_gpus_deployment_runs_a_stage_on_two_processes_in_a_clone_of_the_deployed_commit(
    prefect_server: dict[str, str], two_gpus: str, smoke_run: Path, tmp_path: Path
) -> None:
    repo = copy_run(smoke_run, tmp_path / "repo")
    run(
        ["dvc", "remote", "add", "-d", "-f", "storage", str(tmp_path / "dvc-storage")], repo
    )  # absolute: clones find it
    run(["dvc", "push", "-q"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["runtime"]["nproc_per_node"] = 2
    params["finetune"]["train"]["epochs"] += 1  # finetune@full is out of date, the stages before it are not
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    env = {**prefect_server, "PWD": str(repo)}
    run([PREFECT, "work-pool", "create", "maskprune-gpus", "--type", "process"], repo, **env)
    # as `make deploy-gpus` deploys: without MASKPRUNE_WORKER_DIR, which each worker resolves for itself
    deploy_env = {k: v for k, v in subprocess_env(**env).items() if k != "MASKPRUNE_WORKER_DIR"}
    deploy = [PREFECT, "--no-prompt", "deploy", "--name", "gpus"]
    refused = subprocess.run(deploy, cwd=repo, env=deploy_env, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "the working tree has uncommitted changes that no worker would see" in refused.stdout + refused.stderr
    git_id = ["-c", "user.email=t@localhost", "-c", "user.name=t"]
    run(["git", *git_id, "commit", "-qam", "two processes"], repo)
    run(["git", "push", "-q", "origin", "HEAD:main"], repo)
    commit = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert subprocess.run(deploy, cwd=repo, env=deploy_env, capture_output=True, text=True).returncode == 0
    deployment = json.loads(
        run([PREFECT, "deployment", "inspect", "maskprune-pipeline/gpus", "-o", "json"], repo, **env).stdout
    )
    workdir_step = deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
    assert workdir_step["directory"] == "{{ $MASKPRUNE_WORKER_DIR }}"  # left for each worker to resolve
    clone_step = deployment["pull_steps"][1]["prefect.deployments.steps.git_clone"]
    assert (clone_step["repository"], clone_step["commit_sha"]) == (str(origin), commit)
    machine = tmp_path / "gpu-machine"  # another machine's worker: its own folder, nothing of the repository
    machine.mkdir()
    worker_env = subprocess_env(**env, MASKPRUNE_WORKER_DIR=str(machine))
    cmd = [PREFECT, "worker", "start", "--pool", "maskprune-gpus", "--type", "process"]
    api = env["PREFECT_API_URL"]
    with service(
        "Prefect worker",
        cmd,
        lambda: worker_online(api, "maskprune-gpus"),
        tmp_path / "worker.log",
        env=worker_env,
        cwd=machine,
    ):
        out = run(
            [
                PREFECT,
                "deployment",
                "run",
                "maskprune-pipeline/gpus",
                "--param",
                "stage=finetune@full",
                "--watch",
                "--watch-timeout",
                "900",
            ],
            repo,
            **env,
        ).stdout
    assert "Completed" in out, out[-2000:] + (tmp_path / "worker.log").read_text()[-3000:]
    clone = machine / f"maskprune-{commit}"
    assert run(["git", "rev-parse", "HEAD"], clone).stdout.strip() == commit
    # dvc pull brought the earlier stages' outputs: only finetune@full ran, as 2 torchrun processes
    history = pd.read_csv(clone / "models" / "finetune" / "full" / "history.csv")
    assert list(history["epoch"]) == list(range(1, params["finetune"]["train"]["epochs"] + 1))
    client = MlflowClient(tracking_uri=f"sqlite:///{clone / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("maskprune")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`maskprune.source` = 'prefect'")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {r.data.tags["maskprune.stage"]: r.data.tags["processes"] for r in children} == {"finetune@full": "2"}
