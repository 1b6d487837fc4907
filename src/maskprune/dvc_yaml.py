"""dvc.yaml's stages written out as DVC names them, each `foreach` and `matrix` item expanded, and
dvc.lock, DVC's record of how each stage last ran.

`python -m stages` runs their commands without DVC; tracking hashes their dependencies. The graph
between them is DVC's own (`dvc dag`).
"""

from __future__ import annotations

import graphlib
import itertools
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from maskprune.errors import MaskpruneError

LOCK_FILE = "dvc.lock"
_REFERENCE = re.compile(r"\$\{([^}]+)\}")
_EDGE = re.compile(r'^"(?P<src>[^"]+)" -> "(?P<dst>[^"]+)";$')
_NODE = re.compile(r'^"(?P<name>[^"]+)";$')


@dataclass(frozen=True)
class Stage:
    """One stage of dvc.yaml with its `${...}` references filled in."""

    name: str  # as DVC names it: 'prepare', 'finetune@masked', 'prune@evit-full-0.5'
    cmd: str
    deps: list[str]
    params: list[str]  # params.yaml keys, dotted: 'seed', 'pretrain.train'


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key (`prune.keep_rates`) of a nested mapping."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise MaskpruneError(f"dvc.yaml refers to ${{{dotted}}}, which is not a params key")
        node = node[part]
    return node


def interpolate(text: str, scope: dict[str, Any]) -> str:
    """`text` with every `${key}` replaced by its value in `scope` (params and `item`)."""
    return _REFERENCE.sub(lambda m: str(lookup(scope, m.group(1))), text)


def items_of(value: str | list[Any] | dict[str, Any], params: dict[str, Any]) -> list[Any] | dict[str, Any]:
    """A `foreach` list or dict (its keys are `${key}`) or a `matrix` axis: written out, or a params list's `${key}`."""
    return lookup(params, _REFERENCE.fullmatch(value).group(1)) if isinstance(value, str) else value


def _scopes(name: str, stage: dict[str, Any], params: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(stage name, scope) of each item of a `foreach` or `matrix` stage, or of the plain stage."""
    if "foreach" in stage:
        items = items_of(stage["foreach"], params)
        pairs = items.items() if isinstance(items, dict) else ((item, item) for item in items)
        return [(f"{name}@{key}", {**params, "key": key, "item": item}) for key, item in pairs]
    if "matrix" in stage:
        axes = {axis: items_of(value, params) for axis, value in stage["matrix"].items()}
        combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
        return [(f"{name}@{'-'.join(str(v) for v in item.values())}", {**params, "item": item}) for item in combos]
    return [(name, params)]


def param_keys(entries: list[str | dict[str, list[str]]], scope: dict[str, Any]) -> list[str]:
    """The params.yaml keys of a stage's `params` list (a `{file: [keys]}` entry names another file's)."""
    keys = [entry for entry in entries if isinstance(entry, str)]
    keys += [key for entry in entries if isinstance(entry, dict) for key in entry.get("params.yaml", [])]
    return [interpolate(key, scope) for key in keys]


def expand(dvc: dict[str, Any], params: dict[str, Any]) -> list[Stage]:
    """Every stage of the parsed dvc.yaml `dvc` under `params`, in the file's order."""
    stages = []
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        for stage_name, scope in _scopes(name, stage, params):
            deps = [interpolate(dep, scope) for dep in body.get("deps", [])]
            keys = param_keys(body.get("params", []), scope)
            stages.append(Stage(stage_name, interpolate(body["cmd"], scope), deps, keys))
    return stages


def stage_graph(root: Path, target: str | None = None) -> dict[str, set[str]]:
    """{stage: the stages it depends on directly} from `dvc dag` (only `target` and its ancestors if given)."""
    args = [sys.executable, "-m", "dvc", "dag", "--dot", *([target] if target else [])]
    dot = subprocess.run(args, cwd=root, capture_output=True, text=True, check=True).stdout
    graph: dict[str, set[str]] = {}
    for line in map(str.strip, dot.splitlines()):
        if edge := _EDGE.match(line):
            graph.setdefault(edge["dst"], set()).add(edge["src"])
        elif node := _NODE.match(line):
            graph.setdefault(node["name"], set())
    return graph


def stage_order(root: Path, target: str | None = None) -> list[str]:
    """Stage names in a topological order of `dvc dag` (only `target` and its ancestors if given)."""
    return list(graphlib.TopologicalSorter(stage_graph(root, target)).static_order())


def read_lock(root: Path) -> dict[str, Any]:
    """`root`'s dvc.lock ({} without one)."""
    lock = root / LOCK_FILE
    return (yaml.safe_load(lock.read_text()) or {}) if lock.is_file() else {}
