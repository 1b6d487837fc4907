"""Seeds in workspaces of their own: a sweep killed mid-stage resumes through the same command."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flows.scheduling import critical_paths
from flows.seeds import shared_stages, training_graph, with_seed
from maskprune.environment import cpu_name
from maskprune.errors import MaskpruneError
from tests.conftest import copy_run, narrow, subprocess_env

pytestmark = pytest.mark.integration
SEEDS = [sys.executable, "-m", "flows.seeds"]
SWEEP = [*SEEDS, "--seeds", "1", "--no-report"]
REPO = Path(__file__).resolve().parents[2]
TIMINGS = ("seconds", "per_s", "throughput", "aa_ratio")  # wall-clock measurements differ between runs


def env(repo: Path) -> dict[str, str]:
    # NOTE: one torch thread in every run, so a stage run alone and one beside another do the same work
    return subprocess_env(PREFECT_HOME=str(repo.parent / f"{repo.name}-prefect"), OMP_NUM_THREADS="1")


def ran_side_by_side(log: str) -> bool:
    """Whether the sweep's log shows two training stages' tasks running at once (one's lines between
    another's first and last)."""
    tasks = re.findall(r"Task run 'seed \d+: ([^']+)'", log)
    first = {task: tasks.index(task) for task in set(tasks)}
    last = {task: len(tasks) - 1 - tasks[::-1].index(task) for task in set(tasks)}
    return any(first[a] < first[b] < last[a] for a in first for b in first if a != b)


def seed_run(repo: Path, args: list[str]) -> str:
    done = subprocess.run(args, cwd=repo, env=env(repo), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def kill_after_first_epoch(repo: Path, state: Path) -> None:
    """Start the sweep in its own process group and SIGKILL the group once `state` records epoch 1."""
    log = repo.parent / f"{repo.name}-killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            SWEEP, cwd=repo, env=env(repo), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            if state.is_file() and json.loads(state.read_text())["epoch"] == 1:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.1)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"the sweep never saved epoch 1 in {state} (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


def measured(folder: Path) -> dict[str, float]:
    """Every numeric metric of every stage in a collected seed, timings left out."""
    values = {}
    for path in sorted(folder.rglob("metrics.json")):
        for key, value in json.loads(path.read_text()).items():
            if isinstance(value, (int, float)) and not any(part in key for part in TIMINGS):
                values[f"{path.parent.relative_to(folder)}:{key}"] = float(value)
    return values


def test_stages_side_by_side_show_in_the_log_as_interleaved_tasks() -> None:
    one_by_one = "Task run 'seed 1: a' - x\nTask run 'seed 1: a' - y\nTask run 'seed 1: b' - z\n"
    assert not ran_side_by_side(one_by_one)
    assert ran_side_by_side(one_by_one + "Task run 'seed 1: c' - x\nTask run 'seed 1: b' - y\n")


def test_a_seed_trains_its_pending_stages_and_those_downstream_the_longest_chains_first() -> None:
    """dvc.yaml: prune@evit-full-0.5 trains from finetune@full's model; `dvc status` names only the stage
    whose deps changed, yet DVC reruns every stage downstream of it."""
    graph = training_graph({1: REPO}, {1: {"finetune@full"}})
    assert graph[(1, "finetune@full")] == set()
    assert graph[(1, "prune@evit-full-0.5")] == {(1, "finetune@full")}
    assert not [stage for _, stage in graph if stage.startswith(("pretrain", "distill", "teacher", "evaluate"))]
    # unmeasured, each stage counts alike: finetune@full heads the longest chain (full -> masked -> prune)
    longest = critical_paths(graph, {})
    assert max(longest, key=longest.get) == (1, "finetune@full") and longest[(1, "prune@evit-full-0.5")] == 1


def test_params_take_the_seed_and_keep_their_comments() -> None:
    text = "# profile cpu\nprofile: cpu\nseed: 0  # the students'\ndata:\n  seed: 0\n"
    assert with_seed(text, 3) == "# profile cpu\nprofile: cpu\nseed: 3\ndata:\n  seed: 0\n"
    with pytest.raises(MaskpruneError, match="one top-level `seed:` line"):
        with_seed("data:\n  seed: 0\n", 3)


def test_only_the_data_split_and_the_teachers_are_shared_by_every_seed() -> None:
    """dvc.yaml: the students' stages take `seed` (directly or through an upstream stage); prepare
    and the two teachers take only `data.seed` and `teacher.seed`."""
    assert shared_stages(REPO) == ["prepare", "distill_teacher", "teacher"]


def test_a_killed_seed_sweep_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(
    smoke_run: Path, tmp_path: Path
) -> None:
    """The stage cut off after its first epoch ends as that stage run straight through with seed 1 ends
    (so every stage after it starts from the same model), and the sweep collects the seed once."""
    resumed, straight = copy_run(smoke_run, tmp_path / "resumed"), copy_run(smoke_run, tmp_path / "straight")
    for repo in (resumed, straight):
        narrow(repo)
    ws = resumed / ".dvc" / "tmp" / "seeds" / "seed-1"

    kill_after_first_epoch(resumed, ws / "checkpoints" / "pretrain" / "mae-baseline" / "state.json")
    status = seed_run(resumed, [*SEEDS, "--status"])
    assert "seed 1: cut off at pretrain@mae-baseline (pretrain@mae-baseline saved after epoch 1 of 2;" in status
    log = seed_run(resumed, [*SWEEP, "--jobs", "2"])
    assert ran_side_by_side(log)  # one seed's stages, two at a time
    assert "seed 1: resuming at pretrain@mae-baseline (pretrain@mae-baseline saved after epoch 1 of 2;" in log
    assert "Stage 'teacher' is cached" in log or "Stage 'teacher' didn't change" in log  # not retrained
    cut = ws / "models" / "pretrain" / "mae-baseline"
    history = (cut / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]  # epoch 2 appended to the saved epoch 1

    params = straight / "params.yaml"
    params.write_text(with_seed(params.read_text(), 1))
    done = subprocess.run(
        ["dvc", "repro", "pretrain@mae-baseline"], cwd=straight, env=env(straight), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    uncut = straight / "models" / "pretrain" / "mae-baseline"
    ours, theirs = measured(cut), measured(uncut)
    assert ours.keys() == theirs.keys() and len(ours) > 5
    # NOTE: the same seeded work on the same threads; only float reduction order may differ
    assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-4)
    weights, reference = load_file(cut / "model.safetensors"), load_file(uncut / "model.safetensors")
    assert weights.keys() == reference.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-4, atol=1e-4)

    collected = resumed / "reports" / "seeds" / "seed-1"
    assert "seed: 1" in (collected / "params.yaml").read_text()
    assert len(measured(collected)) > 50  # every stage of the seed, collected
    times = json.loads((collected / "sweep.json").read_text())
    assert times["whole_seed"] is False  # a resumed run's time is partial
    assert times["jobs"] == 2 and times["seeds_trained"] == 1
    assert times["cpus"] == [cpu_name()] * 2  # the killed run's host and the resuming run's
    assert times["train_seconds"] > 0 and times["evaluate_seconds"] > 0

    assert "seed 1: done, collected in reports/seeds/seed-1" in seed_run(resumed, [*SEEDS, "--status"])
    before = (collected / "params.yaml").stat().st_mtime_ns
    run_times = json.loads((ws / "seed-run.json").read_text())["times"]
    again = seed_run(resumed, SWEEP)
    assert "seed 1: finished" in again and "Running stage" not in again
    assert (collected / "params.yaml").stat().st_mtime_ns == before  # collected once
    # a run with nothing to do keeps the times of the run that did the work
    assert json.loads((ws / "seed-run.json").read_text())["times"] == run_times
