"""Running a graph of stages as Prefect tasks, a few at a time, the longest chains first.

A node starts once every node it waits for has finished; of the nodes ready, the one heading the
longest chain of expected seconds (its own and those of the nodes that wait for it, in turn) starts
first, so the long chains (pre-training, fine-tuning, pruning) start early, the longest stages
before the short ones, and the short stages fill the gaps at the end. A stage is expected to take
as long as its last run took: the training seconds its history.csv records (dvc.lock names it). The
pipeline flow runs one workspace's stages this way, the seed sweep every seed's training stages.
"""

from __future__ import annotations

import graphlib
import statistics
from collections.abc import Callable, Hashable
from pathlib import Path

import pandas as pd
from prefect.futures import PrefectFuture, as_completed

from maskprune.dvc_yaml import read_lock

HISTORY_FILE = "history.csv"


def measured_seconds(root: Path) -> dict[str, float]:
    """{stage: the seconds its last run trained} for the stages of `root`'s dvc.lock whose history.csv
    (one row per epoch, a `seconds` column) is there; the others are not listed."""
    seconds = {}
    for stage, entry in read_lock(root).get("stages", {}).items():
        for out in entry.get("outs", []):
            history = root / out["path"]
            if history.name == HISTORY_FILE and history.is_file():
                seconds[stage] = float(pd.read_csv(history)["seconds"].sum())
    return seconds


def critical_paths(graph: dict[Hashable, set], seconds: dict[Hashable, float]) -> dict[Hashable, float]:
    """{node: the expected seconds of the longest chain that starts at it, its own included}.

    Args:
        graph: {node: the nodes it waits for}.
        seconds: {node: its expected seconds}; a node not in it counts as the median of those that
            are (1 where none is), a typical stage.
    """
    known = [seconds[node] for node in graph if node in seconds]
    typical = statistics.median(known) if known else 1.0
    waiting: dict[Hashable, list] = {node: [] for node in graph}
    for node, deps in graph.items():
        for dep in deps:
            waiting[dep].append(node)
    longest: dict[Hashable, float] = {}
    # NOTE: in reverse topological order every node comes after all the nodes that wait for it
    for node in reversed(list(graphlib.TopologicalSorter(graph).static_order())):
        longest[node] = seconds.get(node, typical) + max((longest[after] for after in waiting[node]), default=0.0)
    return longest


def run_graph(
    graph: dict[Hashable, set],
    submit: Callable[[Hashable], PrefectFuture],
    jobs: int,
    blocked: Callable[[Hashable, set], bool],
    seconds: dict[Hashable, float],
) -> list[Hashable]:
    """Run every node of `graph`, `jobs` at a time; returns the nodes whose task failed, in the order
    they finished.

    Args:
        graph: {node: the nodes it waits for}.
        submit: starts a node's task (`task.submit(...)`) and returns its future.
        jobs: nodes running at a time.
        blocked: (node, the nodes that failed or were not started) -> True where the node must not
            start; it then counts as finished and is not started either.
        seconds: {node: its expected seconds} (see `critical_paths`).
    """
    longest = critical_paths(graph, seconds)
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    ready: list[Hashable] = []
    running: dict[PrefectFuture, Hashable] = {}
    failed: list[Hashable] = []
    not_started: set[Hashable] = set()
    while sorter.is_active():
        ready = sorted([*ready, *sorter.get_ready()], key=lambda node: (-longest[node], node))
        while ready and len(running) < jobs:
            node = ready.pop(0)
            if blocked(node, {*failed, *not_started}):
                not_started.add(node)
                sorter.done(node)
                continue
            running[submit(node)] = node
        if not running:
            continue
        future = next(as_completed(list(running)))
        node = running.pop(future)
        future.wait()  # NOTE: keeps the state the task ended in: read before, `state` asks the API, which can lag
        if future.state.is_failed():
            failed.append(node)
        sorter.done(node)
    return failed
