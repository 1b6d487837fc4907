"""DVC stages `pretrain@<objective>-<loss>` and `distill_teacher`: masked image modelling of a fresh encoder.

`pretrain@<objective>-<loss>` (objective mae | simmim, loss baseline | mto) trains a fresh student
encoder with that objective (claim D). `distill_teacher` (`python -m stages.pretrain teacher`)
trains models.teacher with plain MAE on `distill.teacher_train`, once per data (seed
`teacher.seed`): claim C's self-supervised teacher, larger than the student. After every epoch a
linear probe is fitted on the frozen features (a seeded subset of the training split) and scored on
the test split, so convergence is measured per epoch. Each writes its folder
(models/pretrain/<objective>-<loss>/ or models/distill_teacher/):
  - model.safetensors + meta.json: the encoder with the last probe as its head (a complete model
    that evaluate measures; finetune and distill use the encoder);
  - mim.safetensors: the rest of the MIM model (decoder or pixel head, mask token);
  - history.csv: per epoch the losses, MTO terms, H of every mask-carrying layer, probe top-1;
  - metrics.json: the final values and the encoder's cost with and without masking.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from maskprune import atomic
from maskprune.checkpoint import config_hash, model_meta, pretrained_digest, save_model, save_tensors
from maskprune.cli import run_stage
from maskprune.config import FinetuneTrain, Params
from maskprune.data.storage import PreparedData, load_prepared
from maskprune.errors import MaskpruneError
from maskprune.launch import checkpoint_root
from maskprune.layout import DISTILL_TEACHER_DIR, MODELS_DIR, PretrainVariant, prepared_dir
from maskprune.masking import random_keep_idx
from maskprune.measure import gmacs
from maskprune.models.loading import normalizer_for
from maskprune.models.mim_heads import MAE, SimMIM, check_decoder
from maskprune.models.vit import TokenViT, build_model
from maskprune.objectives.masked_image_modelling import MIMObjective
from maskprune.probe import TIMM_POOL, LinearProbe
from maskprune.runtime import Runtime, seed_everything
from maskprune.tracking.runs import StageRecord
from maskprune.trainer import fit

MIM_FILE = "mim.safetensors"


@dataclass(frozen=True)
class PretrainJob:
    """What one run pre-trains: a pretrain variant of the student, or claim C's teacher."""

    name: str  # the run's name: 'pretrain@mae-mto', 'distill_teacher'
    objective: str
    loss: str
    role: str  # the models.* entry it trains: student | teacher
    folder: Path
    train: FinetuneTrain
    seed: int

    @property
    def mto(self) -> bool:
        return self.loss == "mto"


def pretrain_job(params: Params, variant: str) -> PretrainJob:
    """`teacher` (claim C's teacher) or a pretrain variant `<objective>-<loss>` of the student."""
    if variant == "teacher":
        return PretrainJob(
            "distill_teacher",
            "mae",
            "baseline",
            "teacher",
            DISTILL_TEACHER_DIR,
            params.distill.teacher_train,
            params.teacher.seed,
        )
    chosen = PretrainVariant.parse(variant)
    return PretrainJob(
        f"pretrain@{chosen.name}",
        chosen.objective,
        chosen.loss,
        "student",
        chosen.folder,
        params.pretrain.train,
        params.seed,
    )


def parse_variant(variant: str) -> None:
    """Refuse a variant that is neither `teacher` nor `<objective>-<loss>`."""
    if variant != "teacher":
        PretrainVariant.parse(variant)


def build_mim(params: Params, job: PretrainJob, data: PreparedData) -> tuple[MAE | SimMIM, float]:
    """A fresh encoder (no head) inside the MIM model; and the objective's mask ratio."""
    spec = getattr(params.models, job.role)
    objective = job.objective
    encoder = build_model(spec, num_classes=data.num_classes, in_chans=data.in_chans)
    encoder.reset_classifier(0)
    if objective == "mae":
        cfg = params.pretrain.mae
        try:
            check_decoder(encoder.embed_dim, cfg.decoder_dim, cfg.decoder_heads)
        except ValueError as err:
            raise MaskpruneError(f"params.yaml: {err}") from None
        return MAE(encoder, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, data.in_chans), cfg.mask_ratio
    return SimMIM(encoder, data.in_chans), params.pretrain.simmim.mask_ratio


def encoder_cost(encoder: TokenViT, visible: int, shape: tuple[int, ...], device: torch.device) -> dict[str, float]:
    """The encoder's GMACs per image on the `visible` patches it runs on, and on all of them."""
    example = torch.randn(1, *shape, device=device)
    keep_idx = random_keep_idx(1, encoder.num_patches, visible, device=device)
    masked, full = gmacs(encoder, example, keep_idx=keep_idx), gmacs(encoder, example)
    return {"encoder_gmacs_masked": masked, "encoder_gmacs_full": full, "encoder_gmacs_ratio": masked / full}


def compute(params: Params, root: Path, runtime: Runtime, variant: str) -> None:
    """Pre-train one variant (or claim C's teacher); write the encoder (+ probe head), MIM weights, history, metrics."""
    job = pretrain_job(params, variant)
    started = time.perf_counter()
    seed_everything(job.seed)
    cfg = params.pretrain
    prepared = load_prepared(root / prepared_dir(params.data.name), workers=runtime.loader_workers)
    data = prepared.limit_train(job.train.train_limit, job.seed)
    mim, mask_ratio = build_mim(params, job, data)
    encoder = mim.encoder
    spec = getattr(params.models, job.role)
    objective = MIMObjective(
        job.objective,
        mask_ratio,
        encoder.num_patches,
        spec.patch_size,
        cfg.mae.norm_pix_loss,
        cfg.mto,
        job.mto,
        runtime,
    )
    probe = LinearProbe(cfg.probe, job.seed, normalizer_for(spec, data.meta, runtime.device), prepared, runtime)
    digest = config_hash(
        params.data,
        spec,
        pretrained_digest(spec),
        job.name,
        job.train,
        getattr(cfg, job.objective),
        cfg.mto if job.mto else None,
        cfg.probe,
        job.seed,
        data.meta["sources"],
        data.meta["counts"],
    )
    history = fit(
        mim,
        data,
        job.train,
        objective,
        runtime,
        job.seed,
        checkpoint_root(params.runtime, root) / job.folder.relative_to(MODELS_DIR),
        digest,
        name=job.name,
        normalize=probe.normalize,
        section="distill.teacher_train" if job.role == "teacher" else "pretrain.train",
        validate=False,
        epoch_end=probe,
    )
    if probe.head is None:  # NOTE: a run resumed after its last epoch has no probe fitted yet
        probe.fit_and_score(encoder)
    last = history[-1]
    seen = objective.visible if job.objective == "mae" else encoder.num_patches  # SimMIM: mask tokens too
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
        out = root / job.folder
        encoder.set_pool(TIMM_POOL[cfg.probe.pool], data.num_classes)
        encoder.head = probe.head
        meta = {
            **model_meta(params, data, job.role),
            "stage": job.name,
            "objective": job.objective,
            "loss": job.loss,
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
            f"{job.name}: probe_top1 {metrics['probe_top1']:.4f} rec_loss {metrics['rec_loss']:.4f} "
            f"encoder {metrics['encoder_gmacs_ratio']:.2f}x GMACs of full in {metrics['wall_seconds']:.0f}s "
            f"-> {job.folder}"
        )


def record(params: Params, root: Path, variant: str) -> StageRecord:
    job = pretrain_job(params, variant)
    out = root / job.folder
    cfg = params.pretrain
    section = {
        "objective": job.objective,
        "loss": job.loss,
        "train": job.train.model_dump(),
        job.objective: getattr(cfg, job.objective).model_dump(),
        "probe": cfg.probe.model_dump(),
    }
    if job.mto:
        section["mto"] = cfg.mto.model_dump()
    return StageRecord(
        stage=job.name,
        params={
            "seed": job.seed,
            "data": {"name": params.data.name},
            "models": {job.role: getattr(params.models, job.role).model_dump()},
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
        tags={"objective": job.objective, "loss": job.loss, "role": job.role},
    )


def batch_sizes(params: Params, variant: str) -> dict[str, int]:
    """The global batch of the pre-training run `variant`."""
    key = "distill.teacher_train" if variant == "teacher" else "pretrain.train"
    return {f"{key}.batch_size": pretrain_job(params, variant).train.batch_size}


if __name__ == "__main__":
    run_stage("pretrain", compute, record, variants=parse_variant, batch_sizes=batch_sizes)
