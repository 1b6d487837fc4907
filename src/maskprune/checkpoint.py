"""Checkpoints: safetensors for tensors, JSON for everything else; nothing is ever unpickled.

Two kinds:
  - a model folder (a stage output): `model.safetensors` + `meta.json` (model spec, classes,
    normalisation, provenance), loadable into a fresh TokenViT;
  - a training state folder (for resume): `state-<epoch>.safetensors` (model and optimizer
    tensors) + `state.json` (epoch, scheduler, optimizer groups, history, config hash). The JSON
    is written last and names its tensor file, so a crash mid-save leaves the previous state valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from maskprune import atomic
from maskprune.config import ModelSpec, Params, format_validation_error
from maskprune.data.loader import resize_note
from maskprune.data.sources import sha256_of
from maskprune.data.storage import PreparedData
from maskprune.errors import MaskpruneError
from maskprune.models.pruned import PruningSpec, make_pruned
from maskprune.models.vit import TokenViT, build_model, eval_crop_pct, input_stats

CHECKPOINT_FORMAT = "maskprune-model/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
STATE_FILE = "state.json"
RERUN = "rerun the stage that wrote this folder (`dvc repro`)"


class ModelMeta(BaseModel):
    """What `load_model` and the stages read from a model folder's meta.json; other keys pass as they are."""

    model_config = ConfigDict(extra="allow")

    model: ModelSpec
    num_classes: int = Field(gt=0)
    in_chans: int = Field(gt=0)
    mean: list[float]
    std: list[float]
    pruning: dict[str, Any] | None = None


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write `tensors` to `path` (not atomically); an OS error while writing raises as an OSError."""
    try:
        save_file(_contiguous(tensors), str(path))
    except SafetensorError as err:
        code = re.search(r"os error (\d+)", str(err))  # NOTE: safetensors wraps the OS error in its message
        if not code:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic.atomic_path(path) as tmp:
        write_tensors(tmp, tensors)


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise MaskpruneError(f"{path}: not a readable safetensors file ({err})") from None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def config_hash(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (params sections, data checksums)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pretrained_digest(spec: ModelSpec) -> str:
    """The sha256 of `spec`'s pretrained weights file, '' without one: a stage's config hash includes it."""
    return sha256_of(Path(spec.pretrained_file)) if spec.pretrained_file else ""


def model_meta(params: Params, data: PreparedData, role: str) -> dict[str, Any]:
    """Everything needed to rebuild and feed a model: spec, classes, normalisation (`input_stats`), its
    evaluation crop (`eval_crop_pct`), and the digest of the pretrained weights it descends from."""
    spec = getattr(params.models, role)
    mean, std = input_stats(spec, data.meta)
    return {
        "model": spec.model_dump(),
        "num_classes": data.num_classes,
        "in_chans": data.in_chans,
        "classes": data.meta["classes"],
        "mean": mean,
        "std": std,
        "eval_crop_pct": eval_crop_pct(spec, data.meta),
        "pretrained_sha256": pretrained_digest(spec),
        "data": data.meta["name"],
        "input_resize": resize_note(data.meta["image_shape"], spec.img_size),
        "role": role,
        "seed": params.seed,
    }


def save_model(folder: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Write `model.safetensors` and `meta.json` into `folder`, both or (on any error) neither.

    `meta` must hold what `read_meta` checks (`ModelMeta`): a checkpoint that could not be loaded is never written.
    """
    ModelMeta.model_validate(meta)
    with atomic.atomic_paths(folder / WEIGHTS_FILE, folder / META_FILE) as (weights, meta_file):
        write_tensors(weights, unwrap(model).state_dict())
        atomic.fill(meta_file, atomic.json_text({"format": CHECKPOINT_FORMAT, **meta}))


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise MaskpruneError(
            f"{folder} holds no {META_FILE}: not a maskprune checkpoint; "
            "point at a stage's model folder (e.g. models/teacher)"
        ) from None
    except json.JSONDecodeError as err:
        raise MaskpruneError(f"{path}: corrupt JSON ({err}); {RERUN}") from None
    if not isinstance(meta, dict):
        raise MaskpruneError(f"{path}: holds a JSON {type(meta).__name__}, not a model's description; {RERUN}")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise MaskpruneError(f"{path}: format {meta.get('format')!r} is not {CHECKPOINT_FORMAT!r}; {RERUN}")
    try:
        ModelMeta.model_validate(meta)
        if meta.get("pruning"):
            PruningSpec.from_meta(meta["pruning"])
    except ValidationError as err:
        problems = format_validation_error(err, str(path), RERUN)
        raise MaskpruneError(problems if problems.endswith(RERUN) else f"{problems}; {RERUN}") from None
    except (KeyError, TypeError, MaskpruneError) as err:
        raise MaskpruneError(f"{path}: pruning: not a pruning spec ({err}); {RERUN}") from None
    return meta


def load_model(folder: Path, device: str | torch.device = "cpu") -> tuple[TokenViT, dict[str, Any]]:
    """Rebuild the model described by `meta.json` (pruned if it says so) and load its weights,
    checking every key. Every weight comes from the folder: the pretrained file it started from is not read."""
    folder = Path(folder)
    meta = read_meta(folder)
    spec = ModelSpec.model_validate(meta["model"])
    model = build_model(spec, num_classes=meta["num_classes"], in_chans=meta["in_chans"], weights=False)
    if meta.get("pruning"):
        model = make_pruned(model, PruningSpec.from_meta(meta["pruning"]))
    if "global_pool" in meta:  # e.g. a mean-pooled or flat linear probe as the head
        model.set_pool(meta["global_pool"], meta["num_classes"])
    state = load_tensors(folder / WEIGHTS_FILE)
    mismatch = f"{folder}: weights do not match model {spec.name!r} in meta.json"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        shapes = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln][:1]
        raise MaskpruneError(f"{mismatch} ({shapes[0] if shapes else 'shape mismatch'})") from None
    problems = [*result.missing_keys[:3], *result.unexpected_keys[:3]]
    if problems:
        raise MaskpruneError(f"{mismatch} (mismatched keys such as {', '.join(problems)})")
    return model.to(device), meta


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in info["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": info["param_groups"]}


def save_train_state(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    config_hash: str,
    history: list[dict[str, float]],
    name: str = "",
    epochs: int = 0,
) -> None:
    """Save everything needed to continue after `epoch` (1-based count of finished epochs).

    `name` (the run's log name) and `epochs` (the planned count) only say where it stands.
    """
    folder.mkdir(parents=True, exist_ok=True)
    optim_tensors, optim_info = _flatten_optimizer(optimizer.state_dict())
    model_tensors = {f"model.{k}": v for k, v in unwrap(model).state_dict().items()}
    tensor_file = f"state-{epoch:04d}.safetensors"
    save_tensors(folder / tensor_file, {**model_tensors, **optim_tensors})
    atomic.write_json(
        folder / STATE_FILE,
        {
            "name": name,
            "epoch": epoch,
            "epochs": epochs,
            "config_hash": config_hash,
            "tensors": tensor_file,
            "optimizer": optim_info,
            "scheduler": scheduler.state_dict(),
            "history": history,
        },
    )
    for old in folder.glob("state-*.safetensors"):
        if old.name != tensor_file:
            old.unlink(missing_ok=True)


@dataclass(frozen=True)
class TrainProgress:
    """Where a training run stands, read from its last saved state (no tensors loaded)."""

    name: str  # the run's log name: 'prune@evit-full-0.5', 'distill@vit-cls finetune'
    epoch: int  # epochs finished
    epochs: int  # epochs planned

    def __str__(self) -> str:
        return f"{self.name} saved after epoch {self.epoch} of {self.epochs}"


def train_progress(checkpoints: Path) -> dict[str, TrainProgress]:
    """Each named run's saved progress under `checkpoints`, oldest save first (unreadable states skipped)."""
    found = {}
    for path in sorted(checkpoints.rglob(STATE_FILE), key=lambda p: p.stat().st_mtime):
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if state.get("name"):
            found[state["name"]] = TrainProgress(state["name"], int(state["epoch"]), int(state.get("epochs", 0)))
    return found


def load_train_state(
    folder: Path,
    config_hash: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, list[dict[str, float]]]:
    """Restore the latest state saved in `folder` for this config; (0, []) when there is none."""
    path = folder / STATE_FILE
    if not path.is_file():
        return 0, []
    state = json.loads(path.read_text())
    if state["config_hash"] != config_hash:
        return 0, []
    tensors = load_tensors(folder / state["tensors"])
    model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    unwrap(model).load_state_dict(model_state)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), list(state["history"])
