"""flows.scheduling: the expected seconds of the chains, and on real Prefect tasks the order, concurrency,
and what a failure stops."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.scheduling import critical_paths, measured_seconds, run_graph


@task(cache_policy=NO_CACHE)
def step(node: str, log: list[tuple[str, str]], barrier: threading.Barrier | None) -> None:
    log.append(("start", node))
    if barrier is not None:
        barrier.wait()  # NOTE: breaks (and fails the task) unless the others run beside it
    if node.startswith("bad"):
        raise RuntimeError(f"{node} fails")
    log.append(("end", node))


@flow
def run(
    graph: dict[Hashable, set],
    jobs: int,
    barrier: threading.Barrier | None = None,
    seconds: dict[Hashable, float] | None = None,
) -> tuple[list, list[tuple[str, str]]]:
    log: list[tuple[str, str]] = []
    failed = run_graph(
        graph,
        lambda node: step.submit(node, log, barrier),
        jobs,
        blocked=lambda node, not_run: bool(graph[node] & not_run),
        seconds=seconds or {},
    )
    return failed, log


def test_a_chain_takes_its_own_seconds_and_the_longest_of_those_waiting_for_it() -> None:
    # a -> b -> c and a lone d; c was never measured, so it counts as the median of the others, 3
    graph = {"a": set(), "b": {"a"}, "c": {"b"}, "d": set()}
    assert critical_paths(graph, {"a": 2.0, "b": 3.0, "d": 10.0}) == {"a": 8.0, "b": 6.0, "c": 3.0, "d": 10.0}
    # a fork: f (1 s) and g (5 s) wait for e, never measured, which counts as their median, 3
    assert critical_paths({"e": set(), "f": {"e"}, "g": {"e"}}, {"f": 1.0, "g": 5.0}) == {"e": 8.0, "f": 1.0, "g": 5.0}
    assert critical_paths(graph, {}) == {"a": 3.0, "b": 2.0, "c": 1.0, "d": 1.0}


def test_a_stage_is_expected_to_take_the_seconds_its_history_records(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "history.csv").write_text("epoch,seconds,lr\n1,1.5,0.1\n2,2.5,0.1\n")
    lock = {
        "trained": ["m/history.csv", "m/model.safetensors"],
        "lost": ["gone/history.csv"],  # dvc.lock names it, the workspace has not made it
        "report": ["reports/report.md"],
    }
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n"
        + "".join(
            f"  {stage}:\n    outs:\n" + "".join(f"    - path: {p}\n" for p in outs) for stage, outs in lock.items()
        )
    )
    assert measured_seconds(tmp_path) == {"trained": 4.0}
    assert measured_seconds(tmp_path / "m") == {}  # no dvc.lock


@pytest.mark.integration
def test_one_job_runs_the_node_heading_the_longest_chain_first_and_a_failure_stops_only_its_descendants(
    prefect_harness: None,
) -> None:
    # unmeasured, b has c waiting for it, a nothing: b first (a topological order alone could start with a)
    failed, log = run({"a": set(), "b": set(), "c": {"b"}}, jobs=1)
    assert failed == [] and [node for event, node in log if event == "start"] == ["b", "a", "c"]
    # a expected to take longer than b and c together: a first
    failed, log = run({"a": set(), "b": set(), "c": {"b"}}, jobs=1, seconds={"a": 10.0, "b": 1.0, "c": 1.0})
    assert failed == [] and [node for event, node in log if event == "start"] == ["a", "b", "c"]
    failed, log = run({"bad": set(), "child": {"bad"}, "grandchild": {"child"}, "free": set()}, jobs=1)
    assert failed == ["bad"]
    assert [entry for entry in log if entry[1] != "bad"] == [("start", "free"), ("end", "free")]


@pytest.mark.integration
def test_jobs_run_side_by_side_never_more_than_asked(prefect_harness: None) -> None:
    barrier = threading.Barrier(2, timeout=30)
    failed, log = run({"p": set(), "q": set(), "r": set(), "s": set()}, jobs=2, barrier=barrier)
    assert failed == []
    running, most = 0, 0
    for event, _ in log:
        running += 1 if event == "start" else -1
        most = max(most, running)
    assert most == 2
    # the same barrier under one job: the first node waits for a second that never starts beside it
    failed, _ = run({"p": set(), "q": set()}, jobs=1, barrier=threading.Barrier(2, timeout=2))
    assert failed == ["p", "q"]
