"""How many trainings at a time make the most seeds per hour: one on every core, or one per core.

`flows.seeds --jobs N` trains N seeds at a time with cores // N torch threads each (evaluate runs
alone either way). Whether N > 1 pays depends on how well one training scales over threads, which
this part measures. It times the student's training step (forward, cross-entropy, backward, AdamW
at the benchmark batch, fp32) in fresh worker processes, each with its own torch threads:
  - `1 x C`: one worker with C threads, C the cores this process may use;
  - `C x 1`: C workers with one thread each, at once;
  - the A/A control: `1 x C` again, right after, so each round brackets `C x 1` between two one-job
    timings.
A round starts the workers of one arrangement, lets them warm up, then releases them together; each
times `steps` steps. An arrangement's throughput is the sum of its workers' img/s; the medians over
rounds are reported, with `jobs_speedup` = `C x 1` over the mean of the two one-job timings. The A/A
ratio shows how far the machine drifts within a round (a host that slows down over the run reads
below 1), so `C x 1` counts as faster only if it beats both one-job timings of every round
(`worst_round_speedup` > 1). A seed sweep's training time then scales by about 1 / jobs_speedup
with `--jobs C` against `--jobs 1`; a stage's own data handling, single-threaded, only adds to the
gain of more jobs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import BenchSetup, training_step
from maskprune.aa_control import aa_noisy
from maskprune.config import ModelSpec
from maskprune.models.vit import build_model

READY = "ready"
ROOT = Path(__file__).resolve().parents[1]  # where `python -m benchmarks.jobs` finds the package


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker(config: dict[str, Any]) -> None:
    """One worker: warm up, say `ready`, wait for a line on stdin, time the steps, print their img/s."""
    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    spec = ModelSpec(**config["spec"])
    model = build_model(spec, config["num_classes"], config["in_chans"]).train()
    images = torch.randn(config["batch"], config["in_chans"], spec.img_size, spec.img_size)
    labels = torch.randint(0, config["num_classes"], (config["batch"],))
    step = training_step(model, torch.optim.AdamW(model.parameters(), lr=1e-4), images, labels)
    for _ in range(config["warmup"]):
        step()
    print(READY, flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    for _ in range(config["steps"]):
        step()
    seconds = time.perf_counter() - start
    print(json.dumps({"img_per_s": config["steps"] * config["batch"] / seconds}), flush=True)


def _read(proc: subprocess.Popen[str]) -> str:
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"a benchmark worker exited with {proc.returncode}: {err.strip()[-1500:]}")
    return line.strip()


def timed_round(config: dict[str, Any], workers: int, threads: int) -> float:
    """The summed img/s of `workers` workers with `threads` threads each, timed together."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "benchmarks.jobs", json.dumps({**config, "threads": threads})]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            if (line := _read(proc)) != READY:
                raise RuntimeError(f"a benchmark worker said {line!r} instead of {READY!r}")
        for proc in procs:  # NOTE: every worker is warm before any starts its timed steps
            proc.stdin.write("go\n")
            proc.stdin.flush()
        return sum(json.loads(_read(proc))["img_per_s"] for proc in procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def run(setup: BenchSetup, steps: int = 60) -> dict[str, Any]:
    count = cores()
    if setup.runtime.device.type != "cpu":
        return {"skipped": "a CPU measurement: trainings on one GPU share it differently", "cores": count}
    if count < 2:
        return {"skipped": "one core: there is nothing to split between jobs", "cores": count}
    config = {
        "spec": setup.params.models.student.model_dump(),
        "in_chans": setup.in_chans,
        "num_classes": setup.num_classes,
        "batch": setup.batch,
        "warmup": setup.warmup,
        "steps": steps,
    }
    rounds = max(3, setup.repeats // 4)  # a worker's round takes seconds: fewer rounds give a stable median
    one, split, again = [], [], []
    for _ in range(rounds):
        one.append(timed_round(config, 1, count))
        split.append(timed_round(config, count, 1))
        again.append(timed_round(config, 1, count))
    one_s, split_s, again_s = (statistics.median(values) for values in (one, split, again))
    aa_ratio = again_s / one_s
    worst = min(s / max(o, a) for o, s, a in zip(one, split, again, strict=True))
    return {
        "cores": count,
        "batch": setup.batch,
        "steps": steps,
        "rounds": rounds,
        "one_job_img_per_s": one_s,
        "split_jobs_img_per_s": split_s,
        "aa_img_per_s": again_s,
        "jobs_speedup": split_s / ((one_s + again_s) / 2),
        "worst_round_speedup": worst,
        "aa_ratio": aa_ratio,
        "noisy": aa_noisy(aa_ratio),
        "best_jobs": count if worst > 1 else 1,
        "rounds_img_per_s": {"1 x cores": one, "cores x 1": split, "1 x cores (A/A)": again},
    }


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
