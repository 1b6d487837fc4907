"""What a profile will cost before anything is launched: images, GMACs and GPU-hours per stage.

    python -m maskprune.plan paper                      # the paper profile, priced on the committed H200 run
    python -m maskprune.plan gpu --gpu nvidia-h100-80gb-hbm3
    python -m maskprune.plan                            # this repository's params.yaml
    make plan PROFILE=paper

For every GPU stage of the pipeline the profile declares, the images each training loop sees
(epochs x its training images) and the multiply-accumulates they cost, counted on the stage's real
models at batch 1 (torch's FLOP counter, as `evaluate` counts them):

- a trained model costs 3x its forward per image (forward, and a backward of about twice that), a
  frozen one (a KD teacher, DynamicViT's unpruned copy, a probe's encoder) its forward;
- MIM pre-training runs the encoder on the visible patches and the decoder on all of them; masked
  fine-tuning the student on its expected keep ratio; MaskedKD's teacher on `teacher_keep` of them.

GPU-hours divide the MACs by the MAC rate the benchmark suite measured on the named GPU (the
unpruned student's inference in results/benchmarks/<gpu>*.json: the file, figure and age are
printed). Training rarely sustains its inference rate (data loading, the optimiser, a slower
backward), so read the hours as a lower bound.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

from maskprune.config import PARAMS_FILE, PROFILES, Params, find_repo_root, load_params
from maskprune.errors import MaskpruneError, exit_on_user_error
from maskprune.layout import (
    FINETUNE_VARIANTS,
    distill_variants,
    pipeline_models,
    prepared_dir,
    pretrain_variants,
    prune_variants,
)
from maskprune.masking import random_keep_idx
from maskprune.measure import gmacs
from maskprune.models.mim_heads import MAE, SimMIM
from maskprune.models.pruned import PruningSpec, make_pruned, pruning_blocks
from maskprune.models.vit import TokenViT, build_model
from maskprune.profile import profile_params

BENCHMARKS_DIR = Path("results/benchmarks")
DEFAULT_GPU = "nvidia-h200"
TRAIN_COST = 3.0  # a training step's MACs per image over its forward's
# (training images before the val split, test images, classes, channels) of data sets known without preparing them
KNOWN_DATA = {
    "imagenet": (1_281_167, 50_000, 1000, 3),
    "fashion_mnist": (60_000, 10_000, 10, 1),
    "cifar10": (50_000, 10_000, 10, 3),
}


@dataclass(frozen=True)
class Loop:
    """One pass over data inside a stage: `epochs` x `images`, each costing `gmacs` (trained and frozen models)."""

    what: str
    epochs: int
    images: int
    gmacs: float

    @property
    def total_gmacs(self) -> float:
        return self.epochs * self.images * self.gmacs


class Costs:
    """Forward GMACs per image of the pipeline's models, each counted once on the CPU at batch 1."""

    def __init__(self, params: Params, num_classes: int, in_chans: int):
        self.params, self.num_classes, self.in_chans = params, num_classes, in_chans
        self._cache: dict[tuple, float] = {}

    def _count(self, key: tuple, build: Callable[[], float]) -> float:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def model(self, role: str) -> TokenViT:
        return build_model(getattr(self.params.models, role), self.num_classes, self.in_chans, weights=False).eval()

    def example(self, role: str) -> torch.Tensor:
        size = getattr(self.params.models, role).img_size
        return torch.zeros(1, self.in_chans, size, size)

    def forward(self, role: str, keep: float = 1.0) -> float:
        """A plain forward of the student or teacher on `keep` of its patches."""

        def count() -> float:
            model = self.model(role)
            visible = max(1, round(keep * model.num_patches))
            keep_idx = None if keep >= 1.0 else random_keep_idx(1, model.num_patches, visible)
            return gmacs(model, self.example(role), keep_idx=keep_idx)

        return self._count(("forward", role, keep), count)

    def pruned(self, method: str, keep_rate: float) -> float:
        def count() -> float:
            model = self.model("student")
            spec = PruningSpec(method, keep_rate, pruning_blocks(len(model.blocks), self.params.prune.locations))
            return gmacs(make_pruned(model, spec), self.example("student"))

        return self._count(("pruned", method, keep_rate), count)

    def mim(self, role: str, objective: str) -> float:
        """Pre-training's forward: MAE's encoder on the visible patches and decoder on all; SimMIM's on all."""

        def count() -> float:
            encoder = self.model(role)
            encoder.reset_classifier(0)
            cfg = self.params.pretrain
            if objective == "mae":
                mim: torch.nn.Module = MAE(
                    encoder, cfg.mae.decoder_dim, cfg.mae.decoder_depth, cfg.mae.decoder_heads, self.in_chans
                )
                ratio = cfg.mae.mask_ratio
            else:
                mim, ratio = SimMIM(encoder, self.in_chans), cfg.simmim.mask_ratio
            visible = max(1, round((1 - ratio) * encoder.num_patches))
            keep_idx = random_keep_idx(1, encoder.num_patches, visible)
            return gmacs(mim.eval(), self.example(role), keep_idx=keep_idx)

        return self._count(("mim", role, objective), count)


def limited(images: int, limit: int) -> int:
    return min(images, limit) if limit else images


def stage_loops(params: Params, costs: Costs, train: int, test: int) -> dict[str, list[Loop]]:
    """{DVC stage: its loops over data} for every GPU stage the params declare, in pipeline order."""
    p = params
    loops: dict[str, list[Loop]] = {}
    tt = p.distill.teacher_train
    loops["distill_teacher"] = [
        Loop("MAE on the teacher", tt.epochs, limited(train, tt.train_limit), TRAIN_COST * costs.mim("teacher", "mae"))
    ]
    teacher = costs.forward("teacher")
    if p.teacher.epochs:
        loops["teacher"] = [Loop("teacher with labels", p.teacher.epochs, train, TRAIN_COST * teacher)]
    else:
        loops["teacher"] = [Loop("evaluate the pretrained teacher", 1, test, teacher)]
    probe = p.pretrain.probe
    for variant in pretrain_variants(p.pretrain):
        loops[f"pretrain@{variant.name}"] = [
            Loop(
                f"{variant.objective} ({variant.loss})",
                p.pretrain.train.epochs,
                limited(train, p.pretrain.train.train_limit),
                TRAIN_COST * costs.mim("student", variant.objective),
            ),
            Loop(
                "linear probe features (train and test subsets), each epoch",
                p.pretrain.train.epochs,
                limited(train, probe.train_limit) + limited(test, probe.test_limit),
                costs.forward("student"),
            ),
        ]
    ft = p.finetune
    student = costs.forward("student")
    masked = ft.masked
    expected_keep = sum(k * q for k, q in zip(masked.keep_ratios, masked.probs, strict=True))
    per_variant = {
        "full": TRAIN_COST * student,
        "full_kd": TRAIN_COST * student + teacher,
        "masked_kd": TRAIN_COST * student + costs.forward("teacher", ft.masked_kd.teacher_keep),
        "random_kd": TRAIN_COST * student + costs.forward("teacher", ft.masked_kd.teacher_keep),
        "masked": TRAIN_COST * costs.forward("student", expected_keep) + student,
    }
    for variant in FINETUNE_VARIANTS:
        loops[f"finetune@{variant}"] = [
            Loop(variant, ft.train.epochs, limited(train, ft.train.train_limit), per_variant[variant])
        ]
    pr = p.prune
    for variant in prune_variants(pr):
        frozen = teacher + (student if variant.method == "dynamicvit" else 0.0)
        loops[f"prune@{variant.name}"] = [
            Loop(
                f"{variant.method} at keep {variant.keep_rate} from {variant.init}",
                pr.train.epochs,
                limited(train, pr.train.train_limit),
                TRAIN_COST * costs.pruned(variant.method, variant.keep_rate) + frozen,
            )
        ]
    d = p.distill
    for variant in distill_variants(d):
        backbone = costs.pruned("evit", d.keep_rate) if variant.student == "evit" else student
        stage: list[Loop] = []
        if variant.target != "scratch":
            stage.append(
                Loop(
                    f"distil into {variant.student} ({variant.target})",
                    d.train.epochs,
                    limited(train, d.train.train_limit),
                    TRAIN_COST * backbone + teacher,  # claim C's MAE teacher, on every patch
                )
            )
            stage.append(Loop("linear probe features", 1, limited(train, d.train.train_limit), backbone))
        stage.append(
            Loop(
                "fine-tune with labels",
                d.finetune.epochs,
                limited(train, d.finetune.train_limit),
                TRAIN_COST * backbone,
            )
        )
        loops[f"distill@{variant.name}"] = stage
    ev = p.evaluate
    occluded = len(ev.occlusion_drop) * limited(test, ev.occlusion_limit)
    loops["evaluate"] = [
        Loop(
            "every model on the test set and the occlusion curve (unpruned cost)",
            len(pipeline_models(p)),
            test + occluded,
            student,
        )
    ]
    return loops


def gpu_rate(root: Path, gpu: str, now: datetime) -> tuple[float, str]:
    """(GMACs per second, where that figure comes from) for `gpu`, from its benchmark file."""
    files = sorted((root / BENCHMARKS_DIR).glob(f"{gpu}*.json"), key=lambda f: ("paper" not in f.name, f.name))
    if not files:
        known = sorted({f.stem.removesuffix("-paper") for f in (root / BENCHMARKS_DIR).glob("*.json")})
        raise MaskpruneError(
            f"no benchmark of {gpu!r} in {BENCHMARKS_DIR}/; name one of {', '.join(known)} "
            f"(or run `python -m benchmarks` on that GPU)"
        )
    results = json.loads(files[0].read_text())
    runs = [r for r in results.get("pruning", []) if r.get("mode") == "eager"]
    if not runs:
        raise MaskpruneError(f"{files[0]} has no eager pruning timings; rerun `python -m benchmarks --parts pruning`")
    run = runs[0]
    rate = run["gmacs_unpruned"] * run["img_per_s_unpruned"]
    measured = datetime.strptime(results["measured_at"], "%Y-%m-%d %H:%M:%S")
    setup = results["setup"]
    source = (
        f"{results['device']['name']}: {rate / 1e3:.1f} TMAC/s = {setup['student']['name']} inference, "
        f"{run['gmacs_unpruned']:.2f} GMACs x {run['img_per_s_unpruned']:,.0f} img/s ({setup['dtype']}, batch "
        f"{setup['batch']}, eager), {files[0].relative_to(root)}, measured {results['measured_at']} "
        f"({(now - measured).days} days ago)"
    )
    return rate, source


@dataclass(frozen=True)
class DataSize:
    train: int  # after the validation split and data.train_limit
    test: int
    num_classes: int
    in_chans: int
    source: str


def data_size(params: Params, root: Path) -> DataSize:
    """The training and test images: the prepared meta.json when there is one, else the data set's known size."""
    meta_file = root / prepared_dir(params.data.name) / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        counts = meta["counts"]
        return DataSize(
            counts["train"],
            counts["test"],
            meta["num_classes"],
            meta["image_shape"][0],
            str(meta_file.relative_to(root)),
        )
    if params.data.name not in KNOWN_DATA:
        raise MaskpruneError(
            f"data {params.data.name!r} is not prepared here and its size is not known; run `dvc repro prepare` "
            f"first or name one of {', '.join(KNOWN_DATA)}"
        )
    train, test, classes, chans = KNOWN_DATA[params.data.name]
    train = limited(round(train * (1 - params.data.val_fraction)), params.data.train_limit)
    return DataSize(
        train, limited(test, params.data.test_limit), classes, chans, f"{params.data.name}'s published size"
    )


def plan_table(loops: dict[str, list[Loop]], gmacs_per_s: float) -> pd.DataFrame:
    rows = [
        {
            "stage": stage,
            "loop": loop.what,
            "epochs": loop.epochs,
            "images seen": loop.epochs * loop.images,
            "GMACs / image": loop.gmacs,
            "PMACs": loop.total_gmacs / 1e6,
            "GPU-hours": loop.total_gmacs / gmacs_per_s / 3600,
        }
        for stage, stage_loops_ in loops.items()
        for loop in stage_loops_
    ]
    table = pd.DataFrame(rows)
    total = {
        "stage": "total",
        "loop": "",
        "epochs": None,
        "images seen": table["images seen"].sum(),
        "GMACs / image": None,
    }
    total |= {"PMACs": table["PMACs"].sum(), "GPU-hours": table["GPU-hours"].sum()}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def load(root: Path, profile: str | None) -> tuple[Params, str]:
    if profile is None:
        return load_params(root / PARAMS_FILE), PARAMS_FILE
    return profile_params(profile, root), f"profiles/{profile}.yaml"


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m maskprune.plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile", nargs="?", choices=PROFILES, help="a profile (default: params.yaml as it is)")
    parser.add_argument(
        "--gpu", default=DEFAULT_GPU, help=f"a benchmarked GPU (results/benchmarks/<gpu>*.json; {DEFAULT_GPU})"
    )
    args = parser.parse_args(argv)
    root = find_repo_root()
    params, source = load(root, args.profile)
    now = datetime.now()
    rate, rate_source = gpu_rate(root, args.gpu, now)
    size = data_size(params, root)
    started = time.perf_counter()
    costs = Costs(params, size.num_classes, size.in_chans)
    table = plan_table(stage_loops(params, costs, size.train, size.test), rate)
    gpus = params.runtime.nproc_per_node * params.runtime.nnodes if params.runtime.nproc_per_node != "auto" else None
    print(f"plan of {source}: {size.train:,} training and {size.test:,} test images ({size.source})")
    print(f"GPU rate: {rate_source}")
    print(table.to_markdown(index=False, floatfmt=",.2f", intfmt=","))
    hours = table["GPU-hours"].iloc[-1]
    on = f"; on its {gpus} GPUs about {hours / gpus:,.1f} hours of wall time" if gpus else ""
    print(f"total: {hours:,.1f} GPU-hours on the {args.gpu}{on}; a lower bound (see --help)")
    print(f"(counted in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
