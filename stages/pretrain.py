"""DVC stage `pretrain@<objective>-<loss>`: masked image modelling of the student backbone, with or without MTO.

`pretrain@<objective>-<loss>` (objective mae | simmim, loss baseline | mto) trains a fresh student
encoder with that objective and, after every epoch, fits a linear probe on its frozen features
(a seeded subset of the training split) and scores it on the test split, so convergence is
measured per epoch. It writes models/pretrain/<objective>-<loss>/:
  - model.safetensors + meta.json: the encoder with the last probe as its head (a complete model
    that evaluate measures; finetune and distill use the encoder);
  - mim.safetensors: the rest of the MIM model (decoder or pixel head, mask token);
  - history.csv: per epoch the losses, MTO terms, H of every mask-carrying layer, probe top-1;
  - metrics.json: the final values and the encoder's cost with and without masking.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from maskprune import atomic
from maskprune.checkpoint import config_hash, model_meta, save_model, save_tensors
from maskprune.cli import run_stage
from maskprune.config import Params
from maskprune.data.loader import Normalizer, PreparedData, Split, load_prepared
from maskprune.data.splits import subset_indices
from maskprune.errors import MaskpruneError
from maskprune.layout import CHECKPOINTS_DIR, PretrainVariant, prepared_dir
from maskprune.masking import random_keep_idx
from maskprune.measure import gmacs
from maskprune.models.mim_heads import MAE, SimMIM, check_decoder
from maskprune.models.vit import TokenViT, build_model
from maskprune.objectives.masked_image_modelling import MIMObjective
from maskprune.probe import TIMM_POOL, fit_linear_probe, pooled_features, probe_top1
from maskprune.runtime import Runtime, seed_everything
from maskprune.tracking.runs import StageRecord
from maskprune.trainer import fit

MIM_FILE = "mim.safetensors"


def build_mim(params: Params, objective: str, data: PreparedData) -> tuple[MAE | SimMIM, float]:
    """A fresh student encoder (no head) inside the MIM model; and the objective's mask ratio."""
    encoder = build_model(params.models.student, num_classes=data.num_classes, in_chans=data.in_chans)
    encoder.reset_classifier(0)
    if objective == "mae":
        cfg = params.pretrain.mae
        try:
            check_decoder(encoder.embed_dim, cfg.decoder_dim, cfg.decoder_heads)
        except ValueError as err:
            raise MaskpruneError(f"params.yaml: {err}") from None
        return MAE(encoder, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, data.in_chans), cfg.mask_ratio
    return SimMIM(encoder, data.in_chans), params.pretrain.simmim.mask_ratio


def subset(split: Split, limit: int, seed: int) -> Split:
    keep = torch.from_numpy(subset_indices(len(split), limit, seed))
    return Split(split.images[keep], split.labels[keep])


class LinearProbe:
    """Fits a linear probe on the frozen encoder's pooled features and scores it (after every epoch)."""

    def __init__(self, params: Params, data: PreparedData, runtime: Runtime) -> None:
        cfg = params.pretrain.probe
        self.cfg, self.seed, self.runtime = cfg, params.seed, runtime
        self.train = subset(data.splits["train"], cfg.train_limit, params.seed).to(runtime.device)
        self.test = subset(data.splits["test"], cfg.test_limit, params.seed).to(runtime.device)
        self.normalize = Normalizer(data.meta["mean"], data.meta["std"], params.models.student.img_size, runtime.device)
        self.num_classes = data.num_classes
        self.head: torch.nn.Linear | None = None

    def fit_and_score(self, encoder: TokenViT) -> float:
        batch = max(256, self.cfg.batch_size)
        train = pooled_features(encoder, self.train, self.normalize, self.runtime, batch, self.cfg.pool)
        test = pooled_features(encoder, self.test, self.normalize, self.runtime, batch, self.cfg.pool)
        self.head = fit_linear_probe(train, self.train.labels, self.num_classes, self.cfg, self.seed)
        return probe_top1(self.head, test, self.test.labels)

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        return {"probe_top1": self.fit_and_score(model.encoder)}


def encoder_cost(encoder: TokenViT, visible: int, shape: tuple[int, ...], device: torch.device) -> dict[str, float]:
    """The encoder's GMACs per image on the `visible` patches it runs on, and on all of them."""
    example = torch.randn(1, *shape, device=device)
    keep_idx = random_keep_idx(1, encoder.num_patches, visible, device=device)
    masked, full = gmacs(encoder, example, keep_idx=keep_idx), gmacs(encoder, example)
    return {"encoder_gmacs_masked": masked, "encoder_gmacs_full": full, "encoder_gmacs_ratio": masked / full}


def compute(params: Params, root: Path, runtime: Runtime, variant: str) -> None:
    """Pre-train one variant; write the encoder (+ probe head), MIM weights, history, metrics."""
    chosen = PretrainVariant.parse(variant)
    started = time.perf_counter()
    seed_everything(params.seed)
    cfg = params.pretrain
    prepared = load_prepared(root / prepared_dir(params.data.name))
    data = prepared.limit_train(cfg.train.train_limit, params.seed)
    mim, mask_ratio = build_mim(params, chosen.objective, data)
    encoder = mim.encoder
    spec = params.models.student
    objective = MIMObjective(
        chosen.objective,
        mask_ratio,
        encoder.num_patches,
        spec.patch_size,
        cfg.mae.norm_pix_loss,
        cfg.mto,
        chosen.loss == "mto",
        runtime,
    )
    probe = LinearProbe(params, prepared, runtime)
    digest = config_hash(
        params.data,
        spec,
        chosen.name,
        cfg.train,
        getattr(cfg, chosen.objective),
        cfg.mto if chosen.loss == "mto" else None,
        cfg.probe,
        params.seed,
        data.meta["sources"],
        data.meta["counts"],
    )
    history = fit(
        mim,
        data,
        cfg.train,
        objective,
        runtime,
        params.seed,
        root / CHECKPOINTS_DIR / "pretrain" / chosen.name,
        digest,
        name=f"pretrain@{chosen.name}",
        img_size=spec.img_size,
        section="pretrain.train",
        validate=False,
        epoch_end=probe,
    )
    if probe.head is None:  # NOTE: a run resumed after its last epoch has no probe fitted yet
        probe.fit_and_score(encoder)
    last = history[-1]
    seen = objective.visible if chosen.objective == "mae" else encoder.num_patches  # SimMIM: mask tokens too
    cost = encoder_cost(encoder, seen, (data.in_chans, spec.img_size, spec.img_size), runtime.device)
    metrics: dict[str, Any] = {
        "probe_top1": last["probe_top1"],
        "best_probe_top1": max(r["probe_top1"] for r in history),
        **{key: value for key, value in last.items() if key.startswith(("rec_", "mto_", "h_"))},
        "epochs": len(history),
        "mask_ratio": mask_ratio,
        "visible_patches": objective.visible,
        "train_images": len(data.splits["train"]),
        "train_img_per_s": sum(r["img_per_s"] for r in history) / len(history),
        "train_seconds": sum(r["seconds"] for r in history),
        **cost,
        "wall_seconds": time.perf_counter() - started,
    }
    if runtime.is_main:
        out = root / chosen.folder
        encoder.reset_classifier(data.num_classes, global_pool=TIMM_POOL[cfg.probe.pool])
        encoder.head = probe.head
        meta = {
            **model_meta(params, data, "student"),
            "stage": f"pretrain@{chosen.name}",
            "objective": chosen.objective,
            "loss": chosen.loss,
            "global_pool": encoder.global_pool,
            "config_hash": digest,
            "probe_top1": last["probe_top1"],
        }
        save_model(out, encoder, meta)
        rest = {k: v for k, v in mim.state_dict().items() if not k.startswith("encoder.")}
        save_tensors(out / MIM_FILE, rest)
        atomic.write_text(out / "history.csv", pd.DataFrame(history).to_csv(index=False))
        atomic.write_json(out / "metrics.json", metrics)
        print(
            f"pretrain@{chosen.name}: probe_top1 {metrics['probe_top1']:.4f} rec_loss {metrics['rec_loss']:.4f} "
            f"encoder {metrics['encoder_gmacs_ratio']:.2f}x GMACs of full in {metrics['wall_seconds']:.0f}s "
            f"-> {chosen.folder}"
        )


def record(params: Params, root: Path, variant: str) -> StageRecord:
    chosen = PretrainVariant.parse(variant)
    out = root / chosen.folder
    cfg = params.pretrain
    section = {
        "objective": chosen.objective,
        "loss": chosen.loss,
        "train": cfg.train.model_dump(),
        chosen.objective: getattr(cfg, chosen.objective).model_dump(),
        "probe": cfg.probe.model_dump(),
    }
    if chosen.loss == "mto":
        section["mto"] = cfg.mto.model_dump()
    return StageRecord(
        stage=f"pretrain@{chosen.name}",
        params={
            "seed": params.seed,
            "data": {"name": params.data.name},
            "models": {"student": params.models.student.model_dump()},
            "pretrain": section,
            "runtime": params.runtime.model_dump(),
        },
        metrics=json.loads((out / "metrics.json").read_text()),
        history=pd.read_csv(out / "history.csv").to_dict("records"),
        artifacts=[
            out / "metrics.json",
            out / "history.csv",
            out / "meta.json",
            out / "model.safetensors",
            out / MIM_FILE,
        ],
        tags={"objective": chosen.objective, "loss": chosen.loss},
    )


if __name__ == "__main__":
    run_stage("pretrain", compute, record, variants=PretrainVariant.parse)
