"""Run every stage of dvc.yaml in dependency order in one process, without DVC, MLflow or Prefect.

    python -m stages --workspace DIR [--profile NAME] [--set KEY=VALUE ...]

For a machine that has the model stack alone (torch, timm, numpy, pandas, matplotlib,
safetensors, pydantic, pyyaml): a GPU check, a first look at new data. The stages are those of
dvc.yaml, its `foreach` and `matrix` items expanded from the params, in the file's order, which is
a dependency order (tests/stages/test_main.py checks it). Every stage runs afresh in DIR, which
must not exist yet: it gets params.yaml (the profile, or the repository's params.yaml, with the
`--set` items applied and tracking off) and a copy of dvc.yaml, then the stages' outputs.
DIR/stages.json lists each finished stage with its seconds.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from maskprune import atomic
from maskprune.config import PARAMS_FILE, find_repo_root, load_params
from maskprune.dvc_yaml import expand
from maskprune.errors import MaskpruneError, exit_on_user_error
from maskprune.profile import PROFILES, add_set_argument, apply_sets, profile_params, render
from maskprune.runtime import setup_runtime


def expand_stages(dvc: dict[str, Any], params: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(stage name as DVC names it, module, arguments) of every stage, in dvc.yaml's order."""
    commands = []
    for stage in expand(dvc, params):
        words = shlex.split(stage.cmd)
        if "-m" not in words:
            raise MaskpruneError(
                f"dvc.yaml stage {stage.name}: expected a `python -m stages.<name>` command, got {stage.cmd!r}"
            )
        at = words.index("-m")
        commands.append((stage.name, words[at + 1], words[at + 2 :]))
    return commands


def run_all(
    workspace: Path, repo: Path, params_sets: list[str], profile: str | None, log=print
) -> list[dict[str, Any]]:  # noqa: ANN001
    """Write the workspace's params.yaml and dvc.yaml, then run every stage's compute in order."""
    base = profile_params(profile, repo) if profile else load_params(repo / PARAMS_FILE)
    params = apply_sets(base, [*params_sets, "tracking.enabled=false"])
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    commands = expand_stages(dvc, params.model_dump())
    modules = {module: importlib.import_module(module) for _, module, _ in commands}
    workspace.mkdir(parents=True)
    atomic.write_text(workspace / PARAMS_FILE, render(params))
    shutil.copy2(repo / "dvc.yaml", workspace / "dvc.yaml")
    runtime = setup_runtime(params.runtime)
    done: list[dict[str, Any]] = []
    started_all = time.perf_counter()
    for index, (name, module, arguments) in enumerate(commands, start=1):
        log(f"stages: [{index}/{len(commands)}] {name}")
        started = time.perf_counter()
        modules[module].compute(params, workspace, runtime, *arguments)
        done.append({"stage": name, "seconds": round(time.perf_counter() - started, 2)})
        atomic.write_json(workspace / "stages.json", {"profile": params.profile, "stages": done})
    log(f"stages: {len(done)} stages in {time.perf_counter() - started_all:.0f}s -> {workspace}")
    return done


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", type=Path, required=True, help="a new folder for params.yaml and every output")
    parser.add_argument("--profile", choices=PROFILES, help="default: the repository's params.yaml")
    add_set_argument(parser)
    args = parser.parse_args(argv)
    workspace = args.workspace.resolve()
    if workspace.exists():
        raise MaskpruneError(
            f"--workspace {args.workspace} exists; every stage runs afresh: remove it or name a new folder"
        )
    run_all(workspace, find_repo_root(), args.sets, args.profile)


if __name__ == "__main__":
    main()
