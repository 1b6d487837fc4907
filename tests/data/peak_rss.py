"""Peak resident memory (MB) of `prepare` on an image tree, or of one training epoch from its shards.

    python tests/data/peak_rss.py prepare TREE OUT
    python tests/data/peak_rss.py epoch PREPARED

Prints the larger of this process's (VmHWM) and its children's (the shard writers', the loader workers')
peak resident set, for tests/data/test_memory.py. Runs in its own process so the peak is its own.
"""

from __future__ import annotations

import resource
import sys
import tempfile
from pathlib import Path

import torch


def peak_mb() -> float:
    # NOTE: VmHWM, not RUSAGE_SELF: Linux carries ru_maxrss across exec, so a process started from a
    # large pytest would report pytest's size; the high-water mark of this process's own memory starts at exec
    status = Path("/proc/self/status").read_text()
    own = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def prepare(tree: Path, out: Path) -> None:
    from stages.prepare import prepare_dataset
    from tests.conftest import cpu_params, updated

    cfg = updated(
        cpu_params().data,
        name="tree",
        format="imagefolder",
        root=str(tree),
        storage="shards",
        image_size=16,
        shard_mb=0.5,
    )
    prepare_dataset(cfg, 0, out, log=lambda _: None, workers=2)


def epoch(prepared: Path) -> None:
    from maskprune.data.storage import load_prepared
    from maskprune.models.vit import TokenViT
    from maskprune.objectives.classification import ClassificationObjective
    from maskprune.runtime import Runtime
    from maskprune.trainer import fit
    from tests.conftest import cpu_params, updated

    data = load_prepared(prepared, splits=("train", "val"), workers=2)
    torch.manual_seed(0)
    model = TokenViT(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=32, depth=2, num_heads=2)
    cfg = updated(cpu_params().teacher, epochs=1, batch_size=100, warmup_epochs=0.0)
    cpu = Runtime(torch.device("cpu"), None, False, False)
    with tempfile.TemporaryDirectory() as state:
        fit(model, data, cfg, ClassificationObjective(0.1), cpu, 0, Path(state), "rss", log=lambda _: None)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        epoch(Path(sys.argv[2]))
    print(f"{peak_mb():.1f}")
