"""flows.scheduling on real Prefect tasks: order, concurrency, and what a failure stops."""

from __future__ import annotations

import threading
from collections.abc import Hashable

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.scheduling import run_graph

pytestmark = pytest.mark.integration


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
    graph: dict[Hashable, set], jobs: int, barrier: threading.Barrier | None = None
) -> tuple[list, list[tuple[str, str]]]:
    log: list[tuple[str, str]] = []
    failed = run_graph(
        graph,
        lambda node: step.submit(node, log, barrier),
        jobs,
        blocked=lambda node, not_run: bool(graph[node] & not_run),
    )
    return failed, log


def test_one_job_runs_the_node_with_most_waiting_first_and_a_failure_stops_only_its_descendants(
    prefect_harness: None,
) -> None:
    # b has c waiting for it, a nothing: b first (a topological order alone could start with a)
    failed, log = run({"a": set(), "b": set(), "c": {"b"}}, jobs=1)
    assert failed == [] and [node for event, node in log if event == "start"] == ["b", "a", "c"]
    failed, log = run({"bad": set(), "child": {"bad"}, "grandchild": {"child"}, "free": set()}, jobs=1)
    assert failed == ["bad"]
    assert [entry for entry in log if entry[1] != "bad"] == [("start", "free"), ("end", "free")]


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
