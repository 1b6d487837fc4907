"""Render one training stage as a cluster job: a Slurm batch script or a Kubernetes PyTorchJob.

    python -m maskprune.cluster slurm prune@evit-full-0.5 [--time 24:00:00] [--partition gpu] > job.sbatch
    python -m maskprune.cluster kubernetes prune@evit-full-0.5 --image registry/maskprune:v1 > job.yaml

The templates are deploy/slurm.sbatch and deploy/pytorchjob.yaml; the values come from params.yaml:
`runtime.nnodes` machines with `runtime.nproc_per_node` GPUs each (a number: a cluster's GPUs are not
visible from here), `runtime.max_restarts`, and `runtime.checkpoint_dir`, which must be a folder every
machine sees. The request is checked as a stage checks it before it launches (maskprune.launch), so
a job that could not run is refused here, in one line, before it queues.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys
from pathlib import Path
from string import Template

import yaml

from maskprune.config import PARAMS_FILE, Params, find_repo_root, load_params
from maskprune.dvc_yaml import expand
from maskprune.errors import MaskpruneError, exit_on_user_error
from maskprune.launch import plan_launch

TEMPLATES = {"slurm": "deploy/slurm.sbatch", "kubernetes": "deploy/pytorchjob.yaml"}
RENDEZVOUS_PORT = 29400  # torchrun's default c10d port


def stage_module(root: Path, params: Params, stage: str) -> tuple[str, list[str], dict[str, int]]:
    """(module, arguments, {params key: global batch}) of the training stage `stage` of dvc.yaml."""
    raw = yaml.safe_load((root / PARAMS_FILE).read_text())
    stages = {s.name: s for s in expand(yaml.safe_load((root / "dvc.yaml").read_text()), raw)}
    if stage not in stages:
        raise MaskpruneError(f"no stage {stage!r} in dvc.yaml under these params; `dvc stage list` names them")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # NOTE: the stage modules live in <repo>/stages, beside src/
    words = shlex.split(stages[stage].cmd)
    module, arguments = words[words.index("-m") + 1], words[words.index("-m") + 2 :]
    batch_sizes = getattr(importlib.import_module(module), "batch_sizes", None)
    if batch_sizes is None:
        raise MaskpruneError(f"{stage} does not train, so it runs as one process: run it with `dvc repro {stage}`")
    return module, arguments, batch_sizes(params, arguments[0] if arguments else None)


def render(
    kind: str,
    root: Path,
    params: Params,
    stage: str,
    options: dict[str, str],
) -> str:
    """The job file of `kind` (slurm | kubernetes) that trains `stage` as params.yaml asks.

    Args:
        kind: a key of TEMPLATES.
        root: the repository.
        params: its params.yaml.
        stage: the DVC stage name, e.g. 'prune@evit-full-0.5'.
        options: the template's other fields (time, partition, image, claim, ...).
    """
    cfg = params.runtime
    if cfg.nproc_per_node == "auto":
        raise MaskpruneError(
            "runtime.nproc_per_node is auto, but a cluster's GPUs per machine are not visible from here; "
            "set it to the number each job machine has"
        )
    module, arguments, batches = stage_module(root, params, stage)
    launch = plan_launch(cfg, batches, visible_gpus=cfg.nproc_per_node, cuda=True, scheduled=True)
    if launch.nnodes > 1 and not Path(cfg.checkpoint_dir).is_absolute():
        raise MaskpruneError(
            f"runtime.checkpoint_dir {cfg.checkpoint_dir!r} is relative; give the absolute path of a folder "
            "every machine mounts"
        )
    fields = {
        "stage": stage,
        "slug": re.sub(r"[^a-z0-9-]", "-", stage.lower()),
        "module": module,
        "variant": " ".join(arguments),
        "variant_item": "".join(f", {a}" for a in arguments),
        "nnodes": launch.nnodes,
        "nproc_per_node": launch.nproc_per_node,
        "max_restarts": cfg.max_restarts,
        "port": RENDEZVOUS_PORT,
        **options,
    }
    return Template((root / TEMPLATES[kind]).read_text()).substitute(fields)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskprune.cluster", description=__doc__.split("\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    slurm = kinds.add_parser("slurm", help="an sbatch script: srun starts torchrun on every node")
    slurm.add_argument("stage", help="a training stage of dvc.yaml, e.g. prune@evit-full-0.5")
    slurm.add_argument("--time", default="24:00:00", help="the job's time limit")
    slurm.add_argument("--partition", default="", help="the Slurm partition (default: the cluster's)")
    slurm.add_argument("--cpus-per-task", type=int, default=32, help="CPU cores per node (loader workers)")
    kube = kinds.add_parser("kubernetes", help="a PyTorchJob for Kubeflow's training operator")
    kube.add_argument("stage", help="a training stage of dvc.yaml, e.g. prune@evit-full-0.5")
    kube.add_argument("--image", required=True, help="a container image with the repository's environment")
    kube.add_argument("--claim", default="maskprune-shared", help="the PersistentVolumeClaim every pod mounts")
    kube.add_argument("--mount", default="/workspace", help="where the claim is mounted in the pods")
    kube.add_argument("--repo", default="/workspace/maskprune", help="the repository's path inside the pods")
    args = parser.parse_args(argv)
    root = find_repo_root()
    if args.kind == "slurm":
        options = {
            "repo": str(root),
            "time": args.time,
            "partition_line": f"#SBATCH --partition={args.partition}" if args.partition else "",
            "cpus_per_task": str(args.cpus_per_task),
        }
    else:
        options = {"image": args.image, "claim": args.claim, "mount": args.mount, "repo": args.repo}
    print(render(args.kind, root, load_params(root / PARAMS_FILE), args.stage, options), end="")


if __name__ == "__main__":
    main()
