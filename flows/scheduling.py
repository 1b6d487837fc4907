"""Running a graph of stages as Prefect tasks, a few at a time, the longest chains first.

A node starts once every node it waits for has finished; of the nodes ready, the one with the most
nodes waiting for it (directly or not) starts first, so the long chains (pre-training, fine-tuning,
pruning) start early and the independent stages fill the gaps. The pipeline flow runs one
workspace's stages this way, the seed sweep every seed's training stages.
"""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Hashable

from prefect.futures import PrefectFuture, as_completed


def descendants(graph: dict[Hashable, set]) -> dict[Hashable, int]:
    """{node: how many nodes wait for it, directly or not}.

    Args:
        graph: {node: the nodes it waits for}.
    """
    below: dict[Hashable, set] = {node: set() for node in graph}
    # NOTE: in reverse topological order every node comes after all the nodes that wait for it
    for node in reversed(list(graphlib.TopologicalSorter(graph).static_order())):
        for dep in graph[node]:
            below[dep] |= {node} | below[node]
    return {node: len(nodes) for node, nodes in below.items()}


def run_graph(
    graph: dict[Hashable, set],
    submit: Callable[[Hashable], PrefectFuture],
    jobs: int,
    blocked: Callable[[Hashable, set], bool],
) -> list[Hashable]:
    """Run every node of `graph`, `jobs` at a time; returns the nodes whose task failed, in the order
    they finished.

    Args:
        graph: {node: the nodes it waits for}.
        submit: starts a node's task (`task.submit(...)`) and returns its future.
        jobs: nodes running at a time.
        blocked: (node, the nodes that failed or were not started) -> True where the node must not
            start; it then counts as finished and is not started either.
    """
    below = descendants(graph)
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    ready: list[Hashable] = []
    running: dict[PrefectFuture, Hashable] = {}
    failed: list[Hashable] = []
    not_started: set[Hashable] = set()
    while sorter.is_active():
        ready = sorted([*ready, *sorter.get_ready()], key=lambda node: (-below[node], node))
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
