"""Model checkpoints: safetensors + JSON round trip, and clear errors for the wrong file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from maskprune.checkpoint import load_model, model_meta, save_model
from maskprune.data.storage import PreparedData
from maskprune.errors import MaskpruneError
from maskprune.models.vit import build_model
from tests.conftest import checkpoint_meta, cpu_params, subprocess_env

SPEC = cpu_params().models.student


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(SPEC, 10, 1).eval()
    save_model(tmp_path, model, checkpoint_meta(SPEC))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "model.safetensors"]
    loaded, meta = load_model(tmp_path)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), model(x))
    assert meta["format"] == "maskprune-model/1" and meta["data"] == "fashion_mnist"


def test_weights_that_do_not_match_the_meta_are_refused(tmp_path: Path) -> None:
    save_model(tmp_path, build_model(SPEC, 10, 1), checkpoint_meta(SPEC))
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["model"]["name"] = "vit_teacher"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(MaskpruneError, match="weights do not match model 'vit_teacher'.*size mismatch"):
        load_model(tmp_path)


def test_a_meta_that_could_not_be_loaded_is_never_saved(tmp_path: Path) -> None:
    meta = checkpoint_meta(SPEC)
    del meta["std"]
    with pytest.raises(ValidationError, match="std"):
        save_model(tmp_path / "m", build_model(SPEC, 10, 1), meta)
    assert not tmp_path.joinpath("m").exists()


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(MaskpruneError, match="not a maskprune checkpoint"):
        load_model(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MaskpruneError, match="is not 'maskprune-model/1'"):
        load_model(tmp_path)
    save_model(tmp_path, build_model(SPEC, 10, 1), checkpoint_meta(SPEC))
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


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        (["maskprune-model/1"], "holds a JSON list, not a model's description"),
        ({"format": "maskprune-model/1", "num_classes": 10}, "model, in_chans, mean, std are missing"),
        ({"num_classes": "ten"}, "num_classes: Input should be a valid integer"),
        ({"pruning": {"method": "tome", "keep_rate": 0.5, "blocks": [1]}}, "pruning: not a pruning spec"),
        ({"pruning": {"method": "evit"}}, "pruning: not a pruning spec"),
    ],
)
def test_a_meta_json_of_the_wrong_shape_is_one_line(tmp_path: Path, meta: object, problem: str) -> None:
    save_model(tmp_path, build_model(SPEC, 10, 1), checkpoint_meta(SPEC))
    written = json.loads((tmp_path / "meta.json").read_text())
    shaped = meta if isinstance(meta, list) or "format" in meta else {**written, **meta}
    (tmp_path / "meta.json").write_text(json.dumps(shaped))
    with pytest.raises(MaskpruneError) as err:
        load_model(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'meta.json'}: ") and problem in str(err.value)
    assert "\n" not in str(err.value) and str(err.value).endswith(
        "rerun the stage that wrote this folder (`dvc repro`)"
    )


SAVE_WITHOUT_ROOM = """
import json, resource, signal, sys
from pathlib import Path
from maskprune.checkpoint import save_model
from maskprune.config import ModelSpec
from maskprune.errors import exit_on_user_error
from maskprune.models.vit import build_model

folder, limit, meta = Path(sys.argv[1]), int(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
spec = ModelSpec.model_validate(meta["model"])
model = build_model(spec, 10, 1)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # NOTE: the write then fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
exit_on_user_error(save_model)(folder, model, meta)
"""


@pytest.mark.parametrize("too_big", ["model.safetensors", "meta.json"])
def test_a_save_that_finds_no_room_is_one_line_and_leaves_the_previous_model_whole(
    tmp_path: Path, too_big: str
) -> None:
    """A real file-size limit (ulimit -f) stands in for a full disk: the same failed write(), EFBIG for ENOSPC."""
    folder = tmp_path / "model"
    save_model(folder, build_model(SPEC, 10, 1), checkpoint_meta(SPEC))
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    weights = len(before["model.safetensors"])
    meta = checkpoint_meta(SPEC)
    if too_big == "meta.json":  # NOTE: the new weights fit; only their meta.json does not
        meta["classes"] = ["x" * 1000] * (weights // 1000 + 10)
    limit = weights // 2 if too_big == "model.safetensors" else weights + 4096
    (tmp_path / "new-meta.json").write_text(json.dumps(meta))
    done = subprocess.run(
        [sys.executable, "-c", SAVE_WITHOUT_ROOM, str(folder), str(limit), str(tmp_path / "new-meta.json")],
        env=subprocess_env(PYTHONPATH="src"),
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stderr) == (
        2,
        f"maskprune: error: {folder / too_big}: file too large; free space on its file system (or raise the "
        "quota or file-size limit) and rerun: the previous outputs are left whole\n",
    )
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before  # no temporary file either
