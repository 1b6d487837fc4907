"""Models started from local pretrained weights: their own normalisation, their digest, a teacher used as it is."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file

from maskprune.checkpoint import load_model, model_meta
from maskprune.config import Params
from maskprune.data.loader import Normalizer
from maskprune.data.storage import PreparedData, load_prepared
from maskprune.errors import MaskpruneError
from maskprune.layout import PREPARED_DIR, TEACHER_DIR
from maskprune.measure import top1
from maskprune.models.vit import build_model, take_inputs_as
from maskprune.profile import deep_merge
from maskprune.runtime import Runtime
from stages import teacher as teacher_stage
from stages.prepare import prepare_dataset
from tests.conftest import cpu_params, updated

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, compile=False, progress=False)
NAME = "deit_tiny_patch16_224.fb_in1k"
FILE = "pretrained/deit_tiny.safetensors"
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # DeiT's (timm's IMAGENET_DEFAULT_MEAN/STD)
DATA_STATS = {"mean": [0.3, 0.4, 0.5], "std": [0.2, 0.25, 0.3]}
GRID = {"img_size": cpu_params().models.teacher.img_size, "patch_size": cpu_params().models.teacher.patch_size}


def write_weights(root: Path, num_classes: int, in_chans: int = 3, seed: int = 0) -> Path:
    """A DeiT-Tiny on the cpu profile's teacher grid, random weights, as a timm safetensors file."""
    torch.manual_seed(seed)
    model = timm.create_model(NAME, pretrained=False, num_classes=num_classes, in_chans=in_chans, **GRID)
    path = root / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def teacher_params(**teacher: object) -> Params:
    models = {"teacher": {"name": NAME, "pretrained_file": FILE, **teacher}}
    raw = deep_merge(cpu_params().model_dump(), {"models": models, "teacher": {"init": "pretrained_file"}})
    return Params.model_validate(raw)


def data_of(channels: int) -> PreparedData:
    stats = {key: value[:channels] for key, value in DATA_STATS.items()}
    meta = {"name": "d", "num_classes": 10, "image_shape": [channels, 28, 28], "classes": list("abcdefghij")}
    return PreparedData(Path("."), {**meta, **stats}, {})


@pytest.fixture
def in_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory, where stages resolve pretrained/<file>."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_pretrained_model_is_fed_as_its_weights_were_unless_told_the_data(in_repo: Path) -> None:
    path = write_weights(in_repo, num_classes=1000)
    meta = model_meta(teacher_params(), data_of(3), "teacher")
    assert meta["mean"] == pytest.approx(IMAGENET[0]) and meta["std"] == pytest.approx(IMAGENET[1])
    assert meta["pretrained_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    overridden = model_meta(teacher_params(normalize="data"), data_of(3), "teacher")
    assert (overridden["mean"], overridden["std"]) == (DATA_STATS["mean"], DATA_STATS["std"])
    scratch = model_meta(cpu_params(), data_of(3), "teacher")  # no pretrained file: auto is the data's
    assert (scratch["mean"], scratch["std"], scratch["pretrained_sha256"]) == (
        DATA_STATS["mean"],
        DATA_STATS["std"],
        "",
    )


def test_grey_data_takes_the_mean_of_the_three_channels(in_repo: Path) -> None:
    write_weights(in_repo, num_classes=1000)
    meta = model_meta(teacher_params(), data_of(1), "teacher")
    assert meta["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert meta["std"] == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    assert build_model(teacher_params().models.teacher, 10, in_chans=1).patch_embed.proj.in_channels == 1


def test_the_digest_follows_the_file(in_repo: Path) -> None:
    write_weights(in_repo, 10)
    first = model_meta(teacher_params(), data_of(3), "teacher")["pretrained_sha256"]
    write_weights(in_repo, 10, seed=1)
    second = model_meta(teacher_params(), data_of(3), "teacher")["pretrained_sha256"]
    assert len(first) == len(second) == 64 and first != second


def test_a_model_takes_other_inputs_once_their_standardisation_is_folded_in() -> None:
    torch.manual_seed(0)
    model = build_model(cpu_params().models.teacher, 10, 3).eval()
    images = torch.randint(0, 256, (4, 3, 14, 14), dtype=torch.uint8)  # resized to 28 by the normaliser
    student = ([0.3, 0.4, 0.5], [0.2, 0.25, 0.3])
    expected = model(Normalizer(*IMAGENET, 28, torch.device("cpu"))(images))
    folded = take_inputs_as(model, IMAGENET, student)
    torch.testing.assert_close(folded(Normalizer(*student, 28, torch.device("cpu"))(images)), expected)


def prepared(root: Path, idx_root: Path) -> PreparedData:
    prepare_dataset(updated(cpu_params().data, root=str(idx_root)), seed=0, out_root=root / PREPARED_DIR)
    return load_prepared(root / PREPARED_DIR / "fashion_mnist")


def test_a_teacher_of_no_epochs_is_measured_and_saved_as_it_is(in_repo: Path, idx_root: Path) -> None:
    data = prepared(in_repo, idx_root)
    path = write_weights(in_repo, num_classes=10)
    params = teacher_params()
    params = params.model_copy(update={"teacher": updated(params.teacher, epochs=0)})
    teacher_stage.compute(params, in_repo, CPU)

    out = in_repo / TEACHER_DIR
    metrics = json.loads((out / "metrics.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    assert metrics["epochs"] == 0 and metrics["train_seconds"] == 0 and "train_loss" not in metrics
    assert pd.read_csv(out / "history.csv").to_dict("records") == [{"epoch": 0, "val_top1": metrics["val_top1"]}]
    assert meta["pretrained_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # the file's weights as timm loads them (grey: RGB filters summed), fed at the mean of DeiT's three channels
    timm_model = timm.create_model(
        NAME,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path), "num_classes": 10},
        num_classes=10,
        in_chans=1,
        **GRID,
    )
    grey = Normalizer([float(np.mean(IMAGENET[0]))], [float(np.mean(IMAGENET[1]))], 28, torch.device("cpu"))
    assert metrics["val_top1"] == top1(timm_model, data.splits["val"], grey, CPU, 256)
    saved, _ = load_model(out)
    torch.testing.assert_close(saved.state_dict()["head.weight"], timm_model.state_dict()["head.weight"])


def test_a_teacher_of_no_epochs_needs_a_classifier_for_the_data(in_repo: Path, idx_root: Path) -> None:
    prepared(in_repo, idx_root)
    write_weights(in_repo, num_classes=1000)
    params = teacher_params()
    params = params.model_copy(update={"teacher": updated(params.teacher, epochs=0)})
    with pytest.raises(MaskpruneError, match="has a 1000-class classifier for the data's 10 classes; train it"):
        teacher_stage.compute(params, in_repo, CPU)
