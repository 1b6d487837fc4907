"""Cluster job files rendered from params: a Slurm batch script and a Kubernetes PyTorchJob."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from maskprune.cluster import render
from maskprune.config import Params
from maskprune.errors import MaskpruneError
from tests.conftest import REPO, cpu_params, updated

SLURM = {"repo": "/shared/maskprune", "time": "12:00:00", "partition_line": "", "cpus_per_task": "32"}
KUBE = {"image": "registry.example/maskprune:v1", "claim": "shared", "mount": "/workspace", "repo": "/workspace/mp"}


def cluster_params(**runtime: object) -> Params:
    params = cpu_params()
    changes = {"nproc_per_node": 4, "nnodes": 2, "max_restarts": 2, "checkpoint_dir": "/shared/ckpt", **runtime}
    return params.model_copy(update={"runtime": updated(params.runtime, **changes)})


def test_slurm_script_starts_torchrun_on_every_node_and_records_the_outputs() -> None:
    script = render("slurm", REPO, cluster_params(), "prune@evit-full-0.5", SLURM)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # a syntax check
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --chdir=/shared/maskprune",
        "    --nproc-per-node=4 \\",
        '    --rdzv-endpoint="$head_node:29400" \\',
        "    --max-restarts=2 \\",
        "    -m stages.prune evit-full-0.5",
        "dvc commit --force prune@evit-full-0.5",
    ):
        assert line in script.splitlines(), line


def test_kubernetes_job_holds_the_stage_the_gpus_and_the_restarts() -> None:
    job = yaml.safe_load(render("kubernetes", REPO, cluster_params(), "distill@evit-cls", KUBE))
    assert job["kind"] == "PyTorchJob" and job["metadata"]["name"] == "maskprune-distill-evit-cls"
    assert job["spec"]["elasticPolicy"] == {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 2, "maxRestarts": 2}
    assert job["spec"]["nprocPerNode"] == "4"
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    (container,) = worker["template"]["spec"]["containers"]
    assert worker["replicas"] == 2 and container["image"] == KUBE["image"]
    assert container["command"] == ["python", "-m", "torch.distributed.run", "-m", "stages.distill", "evit-cls"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert worker["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shared"


@pytest.mark.parametrize(
    ("runtime", "stage", "message"),
    [
        ({"nproc_per_node": "auto"}, "teacher", "runtime.nproc_per_node is auto, but a cluster's GPUs"),
        ({}, "evaluate", "evaluate does not train, so it runs as one process"),
        ({}, "prune@evit-full-0.3", "no stage 'prune@evit-full-0.3' in dvc.yaml"),
        ({"checkpoint_dir": "checkpoints"}, "teacher", "runtime.checkpoint_dir 'checkpoints' is relative"),
        ({"nproc_per_node": 3}, "teacher", "teacher.batch_size is 64, which 6 processes"),
    ],
)
def test_a_job_that_could_not_run_is_refused_before_it_queues(runtime: dict, stage: str, message: str) -> None:
    with pytest.raises(MaskpruneError, match="^" + message.replace("(", r"\(")):
        render("slurm", REPO, cluster_params(**runtime), stage, SLURM)
