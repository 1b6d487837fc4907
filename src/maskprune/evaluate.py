"""Evaluate every model checkpoint under models/: accuracy, occlusion, params, GMACs, throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from maskprune import atomic
from maskprune.checkpoint import META_FILE, load_model
from maskprune.config import ModelSpec, Params
from maskprune.data.loader import Normalizer, load_prepared
from maskprune.errors import MaskpruneError
from maskprune.measure import count_params, gmacs, occlusion_curve, paired_throughput, top1
from maskprune.models.vit import build_model
from maskprune.runtime import Runtime, seed_everything


def find_models(models_dir: Path) -> dict[str, Path]:
    """Model folders below `models_dir`, named by their relative path ('teacher', 'finetune/x')."""
    found = sorted(path.parent for path in models_dir.rglob(META_FILE))
    return {folder.relative_to(models_dir).as_posix(): folder for folder in found}


def speed_and_cost(
    model: torch.nn.Module, reference: torch.nn.Module, shape: tuple[int, ...], params: Params, runtime: Runtime
) -> dict[str, float]:
    """GMACs and throughput of `model`, each also as a ratio to `reference` timed alongside it."""
    cfg = params.evaluate
    one = torch.randn(1, *shape, device=runtime.device)
    batch = torch.randn(cfg.throughput_batch, *shape, device=runtime.device)
    macs, ref_macs = gmacs(model, one), gmacs(reference, one)
    model.eval()
    reference.eval()
    img_s, ref_img_s = paired_throughput(lambda: model(batch), lambda: reference(batch), len(batch), runtime,
                                         cfg.throughput_warmup, cfg.throughput_repeats)  # fmt: skip
    return {
        "gmacs": macs,
        "gmacs_ratio": macs / ref_macs,
        "img_per_s": img_s,
        "throughput_ratio": img_s / ref_img_s,
        "reference_img_per_s": ref_img_s,
    }


def evaluate_models(params: Params, root: Path, runtime: Runtime) -> dict[str, Any]:
    """Measure every model; write metrics/evaluate.json and the plot CSVs under plots/evaluate/."""
    seed_everything(params.seed)
    models = find_models(root / "models")
    if not models:
        raise MaskpruneError(f"no model checkpoints under {root / 'models'}: run `dvc repro` first")
    data = load_prepared(root / "data" / "prepared" / params.data.name, splits=("test",))
    test = data.splits["test"].to(runtime.device)
    cfg = params.evaluate
    results: dict[str, Any] = {}
    occlusion_rows, cost_rows = [], []
    for name, folder in models.items():
        model, meta = load_model(folder, runtime.device)
        if meta["data"] != data.meta["name"] or meta["num_classes"] != data.num_classes:
            raise MaskpruneError(f"{folder} was trained on {meta['data']!r}, not on the prepared "
                                 f"{data.meta['name']!r}; rerun its stage or fix data.name")  # fmt: skip
        spec = ModelSpec.model_validate(meta["model"])
        normalize = Normalizer(meta["mean"], meta["std"], spec.img_size, runtime.device)
        reference = build_model(spec, meta["num_classes"], meta["in_chans"]).to(runtime.device)
        shape = (meta["in_chans"], spec.img_size, spec.img_size)
        curve = occlusion_curve(model, test, normalize, runtime, cfg.batch_size, cfg.occlusion_drop,
                                model.num_patches, params.seed)  # fmt: skip
        entry = {
            "top1": top1(model, test, normalize, runtime, cfg.batch_size),
            "params_m": count_params(model) / 1e6,
            **speed_and_cost(model, reference, shape, params, runtime),
            "occlusion_auc": _area(curve),
        }
        results[name] = entry
        occlusion_rows += [{"model": name, **row} for row in curve]
        cost_rows.append({"model": name, **{k: entry[k] for k in ("top1", "gmacs", "img_per_s")}})
        del model, reference
    report = {
        "models": results,
        "setup": {"device": str(runtime.device), "threads": torch.get_num_threads(),
                  "throughput_batch": cfg.throughput_batch, "test_images": len(test)},  # fmt: skip
    }
    if runtime.is_main:
        atomic.write_json(root / "metrics" / "evaluate.json", report)
        occlusion = pd.DataFrame(occlusion_rows)
        for name, rows in occlusion.groupby("model", sort=False):
            path = root / "plots" / "evaluate" / "occlusion" / f"{name.replace('/', '-')}.csv"
            atomic.write_text(path, rows.drop(columns="model").to_csv(index=False))
        atomic.write_text(root / "plots" / "evaluate" / "cost.csv", pd.DataFrame(cost_rows).to_csv(index=False))
    return report


def _area(curve: list[dict[str, float]]) -> float:
    """Trapezoid area under top-1 vs removed fraction, divided by the fraction range covered."""
    xs = [row["drop_fraction"] for row in curve]
    ys = [row["top1"] for row in curve]
    if len(xs) < 2:
        return ys[0]
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])
