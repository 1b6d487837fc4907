"""Switch profile: write the full effective parameter set of a profile to params.yaml.

    python -m maskprune.profile smoke|cpu|gpu [--output params.yaml]

A profile is the schema's defaults (the `cpu` profile) deep-merged with `profiles/<name>.yaml`.
Every key is written out, so DVC sees each value and reruns exactly the stages whose values moved.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from maskprune import atomic
from maskprune.config import PARAMS_FILE, Params, find_repo_root, read_yaml, validate_params
from maskprune.errors import MaskpruneError, exit_on_user_error

PROFILES = ("smoke", "cpu", "gpu")


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `overlay` merged in; nested mappings merge, anything else replaces."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def profile_params(name: str, root: Path) -> Params:
    if name not in PROFILES:
        raise MaskpruneError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    overlay_path = root / "profiles" / f"{name}.yaml"
    overlay = read_yaml(overlay_path) or {}
    if not isinstance(overlay, dict):
        raise MaskpruneError(f"{overlay_path}: expected a mapping of sections")
    merged = deep_merge(Params().model_dump(), {**overlay, "profile": name})
    return validate_params(merged, source=str(overlay_path.relative_to(root)))


def render(params: Params) -> str:
    header = (
        f"# Effective parameters of the '{params.profile}' profile, written by\n"
        f"#   python -m maskprune.profile {params.profile}\n"
        "# Edit values here or with `dvc exp run -S key=value`; every key must stay present.\n"
    )
    return header + yaml.safe_dump(params.model_dump(), sort_keys=False, default_flow_style=False)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskprune.profile", description=__doc__)
    parser.add_argument("name", choices=PROFILES)
    parser.add_argument("--output", type=Path, default=None, help="default: <repo>/params.yaml")
    args = parser.parse_args(argv)
    root = find_repo_root()
    output = args.output or root / PARAMS_FILE
    atomic.write_text(output, render(profile_params(args.name, root)))
    print(f"wrote the '{args.name}' profile to {output}")


if __name__ == "__main__":
    main()
