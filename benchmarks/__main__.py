"""The speed and cost benchmark suite.

    python -m benchmarks                          # every part, on CUDA if present, else the CPU
    python -m benchmarks --parts pruning teacher  # some parts
    python -m benchmarks --device cpu --threads 2 --repeats 30
    python -m benchmarks --preset paper --modes eager graph compile compile-graph --parts pruning teacher

Writes results/benchmarks/<device>[-<preset>].json (every measurement and setting) and .md (tables,
targets). Models come from the `cpu` profile on a CPU and the `gpu` profile on CUDA (--profile
overrides) or from a preset (--preset paper: the papers' scale), with fresh weights; batch 64 on
CPU and 256 on CUDA; bf16 autocast on CUDA. The pruning and teacher parts run once per mode
(benchmarks.common says what each mode is); the other parts run once. With --budget-s, a part
or mode that would start after that many seconds is skipped and listed as skipped.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks import engine, jobs, loader, mae, masked_teacher, orchestration, precision, pruning
from benchmarks.common import GRAPH_MODES, IN_CHANS, MODES, NUM_CLASSES, PRESETS, BenchSetup, device_info
from benchmarks.summary import check_targets, markdown
from maskprune import atomic
from maskprune.config import RuntimeSection, find_repo_root
from maskprune.errors import MaskpruneError, exit_on_user_error
from maskprune.profile import PROFILES, add_set_argument, apply_sets, profile_params
from maskprune.runtime import setup_runtime
from maskprune.tracking.provenance import git_tags

PARTS = ("pruning", "teacher", "engine", "mae", "precision", "jobs", "loader", "orchestration")
PER_MODE = ("pruning", "teacher")  # the parts that run once per mode
RUNNERS = {
    "pruning": pruning.run,
    "teacher": masked_teacher.run,
    "engine": engine.run,
    "mae": mae.run,
    "precision": precision.run,
    "jobs": jobs.run,
    "loader": loader.run,
}


def run_parts(
    setup: BenchSetup,
    parts: list[str],
    root: Path,
    orchestration_profile: str,
    budget_s: float = 0.0,
    log=print,  # noqa: ANN001
) -> dict[str, Any]:
    """Every part in every mode (modes outermost, so the first mode's parts all run first).

    A compiled or graph mode that fails on this device (a capture or compiler error) is recorded
    with its error and the run goes on; eager errors are bugs and propagate.
    """
    results: dict[str, Any] = {"skipped": []}
    started_run = time.monotonic()
    for index, mode in enumerate(setup.modes):
        for part in parts:
            if part not in PER_MODE and index > 0:
                continue
            if budget_s and time.monotonic() - started_run > budget_s:
                results["skipped"].append(
                    {"part": part, "mode": mode, "reason": f"time budget of {budget_s:g} s spent"}
                )
                log(f"benchmarks: {part} ({mode}) skipped: time budget spent")
                continue
            started = time.perf_counter()
            try:
                if part == "orchestration":
                    out = orchestration.run(root, orchestration_profile)
                else:
                    out = RUNNERS[part](replace(setup, mode=mode) if part in PER_MODE else setup)
            except Exception as err:  # noqa: BLE001 - recorded, see the docstring
                if mode == "eager" or part not in PER_MODE:
                    raise
                reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                results["skipped"].append({"part": part, "mode": mode, "reason": reason})
                log(f"benchmarks: {part} ({mode}) failed: {reason}")
                continue
            if part in PER_MODE:
                results.setdefault(part, []).extend(out)
            else:
                results[part] = out
            scope = mode if part in PER_MODE else "once"
            log(f"benchmarks: {part} ({scope}) done in {time.perf_counter() - started:.0f}s")
    return results


def allow_recompiles(limit: int = 64) -> None:
    """Let dynamo keep one compiled graph per benchmarked model (they share forward's code)."""
    import torch._dynamo

    for name in (
        "recompile_limit",
        "cache_size_limit",
        "accumulated_recompile_limit",
        "accumulated_cache_size_limit",
    ):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--profile", choices=PROFILES, help="where the models come from (default: cpu or gpu)")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()),
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["eager"], help="how forwards run (see above)")
    parser.add_argument("--batch", type=int, help="default: the preset's, else 64 on CPU, 256 on CUDA")
    parser.add_argument("--warmup", type=int, help="default: 5 on CPU, 20 on CUDA")
    parser.add_argument("--repeats", type=int, help="default: 20 on CPU, 50 on CUDA")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--budget-s", type=float, default=0.0, help="skip what would start after this many seconds")
    add_set_argument(parser)
    parser.add_argument("--orchestration-profile", default="smoke", choices=PROFILES)
    parser.add_argument("--out", type=Path, default=None, help="default: <repo>/results/benchmarks")
    args = parser.parse_args(argv)
    root = find_repo_root()
    preset = PRESETS.get(args.preset)
    amp = preset.amp if preset else "auto"
    runtime = setup_runtime(RuntimeSection(device=args.device, threads=args.threads, amp=amp, progress="never"))
    cuda = runtime.device.type == "cuda"
    unusable = [m for m in args.modes if m in GRAPH_MODES and not cuda]
    if unusable:
        raise MaskpruneError(f"--modes {' '.join(unusable)}: CUDA graphs need a CUDA device; use eager or compile here")
    params = apply_sets(
        profile_params(args.profile or ("gpu" if cuda else "cpu"), root),
        [*(preset.sets if preset else []), *args.sets],
    )
    if any(m.startswith("compile") for m in args.modes):
        allow_recompiles()
    setup = BenchSetup(
        runtime,
        params,
        batch=args.batch or (preset.batch if preset else (256 if cuda else 64)),
        warmup=args.warmup or (20 if cuda else 5),
        repeats=args.repeats or (50 if cuda else 20),
        mode=args.modes[0],
        preset=args.preset,
        in_chans=preset.in_chans if preset else IN_CHANS,
        num_classes=preset.num_classes if preset else NUM_CLASSES,
        modes=list(args.modes),
    )
    device = device_info(runtime)
    print(
        f"benchmarks: {device['name']}, {args.preset or 'profile ' + setup.params.profile}, batch {setup.batch}, "
        f"{setup.dtype}, modes {' '.join(args.modes)}"
    )
    results: dict[str, Any] = {
        "device": device,
        "setup": setup.describe(),
        "code": git_tags(root),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    results.update(run_parts(setup, args.parts, root, args.orchestration_profile, args.budget_s))
    results["targets"] = check_targets(results)
    out = args.out or root / "results" / "benchmarks"
    stem = device["slug"] + (f"-{args.preset}" if args.preset else "")
    atomic.write_json(out / f"{stem}.json", results)
    atomic.write_text(out / f"{stem}.md", markdown(results) + "\n")
    for target in results["targets"]:
        print(
            f"benchmarks: {'met ' if target['met'] else 'MISS'} {target['target']}: {target['value']:.3f} "
            f"(required {target['required']})"
        )
    print(f"benchmarks: wrote {out / stem}.json and .md")


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = True
    main()
