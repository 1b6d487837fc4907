"""Switch profile: write the full effective parameter set of a profile to params.yaml.

    python -m maskprune.profile smoke|cpu|gpu|gpu-check [--output params.yaml] [--set KEY=VALUE ...]

`profiles/cpu.yaml` sets every key; any other profile is it deep-merged with `profiles/<name>.yaml`.
Then `params.local.yaml` (yours: your dataset, your models), when the repository has one, is merged
over it, so every profile switch keeps your settings; last come the `--set` items. Every key is
written out, so DVC sees each value and reruns exactly the stages whose values moved.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from maskprune import atomic
from maskprune.config import PARAMS_FILE, PROFILES, Params, find_repo_root, read_yaml, validate_params
from maskprune.errors import MaskpruneError, exit_on_user_error

BASE_PROFILE = "cpu"
LOCAL_OVERLAY = "params.local.yaml"
ADD_TO_BASE = f"add {{it}} to profiles/{BASE_PROFILE}.yaml, which every profile extends"


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `overlay` merged in; nested mappings merge, anything else replaces."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_profile(name: str, root: Path) -> dict[str, Any]:
    """`profiles/<name>.yaml` as written, with `profile: <name>`."""
    path = root / "profiles" / f"{name}.yaml"
    tree = read_yaml(path) or {}
    if not isinstance(tree, dict):
        raise MaskpruneError(f"{path}: expected a mapping of sections")
    return {**tree, "profile": name}


def profile_params(name: str, root: Path) -> Params:
    """The `cpu` profile, or it deep-merged with `profiles/<name>.yaml`; each file's errors name it."""
    if name not in PROFILES:
        raise MaskpruneError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    base = read_profile(BASE_PROFILE, root)
    params = validate_params(base, source=f"profiles/{BASE_PROFILE}.yaml", fix=ADD_TO_BASE)
    if name == BASE_PROFILE:
        return params
    merged = deep_merge(base, read_profile(name, root))
    return validate_params(merged, source=f"profiles/{name}.yaml", fix=ADD_TO_BASE)


def apply_sets(params: Params, sets: list[str]) -> Params:
    """`params` with `KEY=VALUE` items (dotted keys, YAML values) applied and validated."""
    tree = params.model_dump()
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise MaskpruneError(f"--set {item!r}: give KEY=VALUE, e.g. prune.keep_rates=[0.5]")
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise MaskpruneError(f"--set {item!r}: {key} is not a params key")
            node = node[part]
        if parts[-1] not in node:
            raise MaskpruneError(f"--set {item!r}: {key} is not a params key")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise MaskpruneError(f"--set {item!r}: the value is not YAML ({str(err).splitlines()[0]})") from None
    return validate_params(tree, source="--set")


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """The `--set KEY=VALUE` option (repeatable) whose items `apply_sets` takes."""
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params value, e.g. prune.keep_rates=[0.5] (YAML values)",
    )


def render(params: Params) -> str:
    header = (
        f"# Effective parameters of the '{params.profile}' profile, written by\n"
        f"#   python -m maskprune.profile {params.profile}\n"
        "# Edit values here or with `dvc exp run -S key=value`; every key must stay present.\n"
    )
    return header + yaml.safe_dump(params.model_dump(), sort_keys=False, default_flow_style=False)


def apply_overlay(params: Params, path: Path) -> tuple[Params, list[str]]:
    """`params` with the YAML file at `path` deep-merged over it, and the sections it sets."""
    overlay = read_yaml(path) or {}
    if not isinstance(overlay, dict):
        raise MaskpruneError(
            f"{path.name}: expected a mapping of sections like params.yaml's, e.g. data: {{name: shoes}}"
        )
    merged = validate_params(
        deep_merge(params.model_dump(), overlay),
        source=path.name,
        fix=f"remove it from {path.name} or fix it",
    )
    return merged, list(overlay)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskprune.profile", description=__doc__)
    parser.add_argument("name", choices=PROFILES)
    parser.add_argument("--output", type=Path, default=None, help="default: <repo>/params.yaml")
    add_set_argument(parser)
    args = parser.parse_args(argv)
    root = find_repo_root()
    output = args.output or root / PARAMS_FILE
    params = profile_params(args.name, root)
    overlay = output.parent / LOCAL_OVERLAY
    if overlay.is_file():
        params, keys = apply_overlay(params, overlay)
        print(f"applied your {overlay.name} ({', '.join(keys) or 'empty'})")
    else:
        existing = read_yaml(output) if output.is_file() else None
        current = existing.get("data") if isinstance(existing, dict) else None
        if isinstance(current, dict) and current != params.data.model_dump():
            print(
                f"note: {output}'s data section (data.name={current.get('name')!r}) is replaced by the "
                f"profile's; to keep your own data across profile switches, put its keys in {LOCAL_OVERLAY}"
            )
    params = apply_sets(params, args.sets)
    atomic.write_text(output, render(params))
    print(f"wrote the '{args.name}' profile to {output}")


if __name__ == "__main__":
    main()
