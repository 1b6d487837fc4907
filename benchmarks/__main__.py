"""The speed and cost benchmark suite.

    python -m benchmarks                          # every part, on CUDA if present, else the CPU
    python -m benchmarks --parts pruning teacher  # some parts
    python -m benchmarks --device cpu --threads 2 --repeats 30

Writes results/benchmarks/<device>.json (every measurement and setting) and <device>.md (tables,
targets). Models come from the `cpu` profile on a CPU and the `gpu` profile on CUDA (--profile
overrides), with fresh weights; batch 64 on CPU and 256 on CUDA; bf16 autocast on CUDA.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks import engine, mae, orchestration, pruning, teacher
from benchmarks.common import BenchSetup, device_info
from benchmarks.report import check_targets, markdown
from maskprune import atomic
from maskprune.config import Params, RuntimeSection, find_repo_root, validate_params
from maskprune.errors import MaskpruneError, exit_on_user_error
from maskprune.profile import PROFILES, profile_params
from maskprune.runtime import setup_runtime
from maskprune.tracking import git_tags

PARTS = ("pruning", "teacher", "engine", "mae", "orchestration")


def run_parts(setup: BenchSetup, parts: list[str], root: Path, orchestration_profile: str,
              log=print) -> dict[str, Any]:  # noqa: ANN001  # fmt: skip
    results: dict[str, Any] = {}
    for part in parts:
        started = time.perf_counter()
        if part == "orchestration":
            results[part] = orchestration.run(root, orchestration_profile)
        else:
            results[part] = {"pruning": pruning, "teacher": teacher, "engine": engine, "mae": mae}[part].run(setup)
        log(f"benchmarks: {part} done in {time.perf_counter() - started:.0f}s")
    return results


def override(params: Params, sets: list[str]) -> Params:
    """`params` with `key=value` items (dotted keys, YAML values) applied and validated."""
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
        node[parts[-1]] = yaml.safe_load(value)
    return validate_params(tree, source="--set")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--profile", choices=PROFILES, help="where the models come from (default: cpu or gpu)")
    parser.add_argument("--batch", type=int, help="default: 64 on CPU, 256 on CUDA")
    parser.add_argument("--warmup", type=int, help="default: 5 on CPU, 20 on CUDA")
    parser.add_argument("--repeats", type=int, help="default: 20 on CPU, 50 on CUDA")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"),
                        help="torch.compile every timed model in this mode (reduce-overhead: CUDA graphs); "
                             "training always compiles in the default mode")  # fmt: skip
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a profile value, e.g. prune.keep_rates=[0.5] (YAML values)")  # fmt: skip
    parser.add_argument("--orchestration-profile", default="smoke", choices=PROFILES)
    parser.add_argument("--out", type=Path, default=None, help="default: <repo>/results/benchmarks")
    args = parser.parse_args(argv)
    root = find_repo_root()
    runtime = setup_runtime(RuntimeSection(device=args.device, threads=args.threads,
                                           compile=args.compile_mode is not None, progress="never"))  # fmt: skip
    cuda = runtime.device.type == "cuda"
    params = override(profile_params(args.profile or ("gpu" if cuda else "cpu"), root), args.sets)
    setup = BenchSetup(runtime, params, batch=args.batch or (256 if cuda else 64),
                       warmup=args.warmup or (20 if cuda else 5), repeats=args.repeats or (50 if cuda else 20),
                       compile_mode=args.compile_mode)  # fmt: skip
    device = device_info(runtime)
    print(f"benchmarks: {device['name']}, profile {setup.params.profile}, batch {setup.batch}, {setup.dtype}")
    results: dict[str, Any] = {"device": device, "setup": setup.describe(), "code": git_tags(root),
                               "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    results.update(run_parts(setup, args.parts, root, args.orchestration_profile))
    results["targets"] = check_targets(results)
    out = args.out or root / "results" / "benchmarks"
    stem = device["slug"] + (f"-compile-{args.compile_mode}" if args.compile_mode else "")
    atomic.write_json(out / f"{stem}.json", results)
    atomic.write_text(out / f"{stem}.md", markdown(results) + "\n")
    for target in results["targets"]:
        print(f"benchmarks: {'met ' if target['met'] else 'MISS'} {target['target']}: {target['value']:.3f} "
              f"(required {target['required']})")  # fmt: skip
    print(f"benchmarks: wrote {out / stem}.json and .md")


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = True
    main()
