"""Model checkpoints: safetensors + JSON round trip, and clear errors for the wrong file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maskprune.checkpoint import load_model, model_meta, save_model
from maskprune.config import ModelSpec
from maskprune.data.storage import PreparedData
from maskprune.errors import MaskpruneError
from maskprune.models.vit import build_model
from tests.conftest import cpu_params

SPEC = cpu_params().models.student


def meta_for(spec: ModelSpec) -> dict:
    return {
        "model": spec.model_dump(),
        "num_classes": 10,
        "in_chans": 1,
        "data": "fashion_mnist",
        "mean": [0.3],
        "std": [0.3],
        "classes": [str(i) for i in range(10)],
    }


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(SPEC, 10, 1).eval()
    save_model(tmp_path, model, meta_for(SPEC))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "model.safetensors"]
    loaded, meta = load_model(tmp_path)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), model(x))
    assert meta["format"] == "maskprune-model/1" and meta["data"] == "fashion_mnist"


def test_weights_that_do_not_match_the_meta_are_refused(tmp_path: Path) -> None:
    save_model(tmp_path, build_model(SPEC, 10, 1), meta_for(SPEC))
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["model"]["name"] = "vit_teacher"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(MaskpruneError, match="weights do not match model 'vit_teacher'.*size mismatch"):
        load_model(tmp_path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(MaskpruneError, match="not a maskprune checkpoint"):
        load_model(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MaskpruneError, match="is not 'maskprune-model/1'"):
        load_model(tmp_path)
    save_model(tmp_path, build_model(SPEC, 10, 1), meta_for(SPEC))
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04pickle-ish bytes")
    with pytest.raises(MaskpruneError, match="not a readable safetensors file"):
        load_model(tmp_path)


def test_model_meta_records_the_input_resize() -> None:
    params = cpu_params()
    meta = {"name": "fm", "num_classes": 10, "image_shape": [1, 20, 20], "classes": [], "mean": [0.3], "std": [0.3]}
    data = PreparedData(Path("."), meta, {})
    size = params.models.student.img_size
    assert model_meta(params, data, "student")["input_resize"] == (
        f"20x20 images are resized to {size}x{size} (bilinear) for this model"
    )
    same = PreparedData(Path("."), {**meta, "image_shape": [1, size, size]}, {})
    assert model_meta(params, same, "student")["input_resize"] is None
