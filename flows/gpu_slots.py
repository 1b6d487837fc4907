"""GPU slots: a Prefect global concurrency limit per machine whose slots are its GPUs.

A task that runs training holds as many slots as the processes its stage starts on this machine
(`runtime.nproc_per_node`, auto being every visible GPU), so one flow run of an 8-GPU stage holds
8 slots and two runs never share a GPU, while stages that train nothing (prepare, report) hold
none. The limit is named for the machine (`gpus-<hostname>`) because the processes of a flow run
start where its worker runs: `make worker GPUS=8` creates it there before the worker starts. With
no such limit (a laptop, the tests' ephemeral runs), nothing waits.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from maskprune.config import RuntimeSection
from maskprune.errors import MaskpruneError
from maskprune.launch import processes_per_node, uses_cuda

LIMIT_PREFIX = "gpus-"


def gpu_limit(host: str | None = None) -> str:
    """The name of `host`'s (default: this machine's) GPU limit."""
    return f"{LIMIT_PREFIX}{host or socket.gethostname()}"


def gpus_of(cfg: RuntimeSection) -> int:
    """GPU slots a training stage with this `runtime` holds on this machine."""
    return processes_per_node(cfg, torch.cuda.device_count(), uses_cuda(cfg))


@contextmanager
def holding_gpus(count: int) -> Iterator[None]:
    """Hold `count` of this machine's GPU slots while the block runs (none: nothing to wait for).

    Args:
        count: slots to take at once, 0 for work that needs no GPU.
    """
    if count < 1:
        yield
        return
    name = gpu_limit()
    with get_client(sync_client=True) as client:
        try:
            slots = client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            slots = None
    if slots is None:  # NOTE: no limit on this machine: nothing to wait for (Prefect would warn on each task)
        yield
        return
    if count > slots:
        raise MaskpruneError(
            f"this stage starts {count} training processes but the Prefect limit {name} has {slots} GPU slots; "
            f"lower runtime.nproc_per_node or restart this machine's worker with `make worker GPUS={count}`"
        )
    with concurrency(name, occupy=count, strict=False):
        yield
