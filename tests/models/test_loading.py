"""Stage checkpoints loaded as the model a stage needs, checked against params (maskprune.models.loading)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskprune.checkpoint import save_model
from maskprune.config import ModelSpec, Params
from maskprune.data.storage import PreparedData
from maskprune.errors import MaskpruneError
from maskprune.models.loading import init_student, load_init, load_teacher
from maskprune.models.vit import build_model
from maskprune.profile import deep_merge
from tests.conftest import checkpoint_meta, cpu_params


def test_init_of_another_architecture_is_refused(tmp_path: Path) -> None:
    spec = cpu_params().models.teacher
    save_model(
        tmp_path / "models" / "finetune" / "full",
        build_model(spec, 10, 1),
        checkpoint_meta(spec),
    )
    with pytest.raises(MaskpruneError, match=r"holds a vit_teacher .* not an unpruned models.student"):
        load_init(cpu_params().models.student, "full", tmp_path, torch.device("cpu"))


DATA = PreparedData(
    Path("."),
    {"name": "fashion_mnist", "num_classes": 10, "image_shape": [1, 28, 28], "mean": [0.3], "std": [0.3]},
    {},
)
STATS = ([0.3], [0.3])  # DATA's, as write_model records them


def params(**overlay: object) -> Params:
    return Params.model_validate(deep_merge(cpu_params().model_dump(), overlay))


def write_model(folder: Path, spec: ModelSpec, seed: int = 0, data: str = "fashion_mnist", classes: int = 10) -> None:
    torch.manual_seed(seed)
    model = build_model(spec, classes, 1)
    save_model(
        folder,
        model,
        checkpoint_meta(spec, classes, data=data),
    )


def test_init_from_a_model_folder_loads_the_backbone_but_not_the_head(tmp_path: Path) -> None:
    spec = cpu_params().models.student
    write_model(tmp_path / "models" / "pretrain" / "mae", spec, seed=1, classes=7)
    torch.manual_seed(1)
    source = build_model(spec, 7, 1)
    model, info = init_student(params(finetune={"init": "models/pretrain/mae"}), DATA, tmp_path)
    assert info["init"] == "models/pretrain/mae"
    torch.testing.assert_close(model.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    torch.testing.assert_close(model.pos_embed, source.pos_embed)
    assert model.head.out_features == 10  # a fresh head for this dataset's classes


def test_init_from_scratch_is_seeded(tmp_path: Path) -> None:
    scratch = params(finetune={"init": "scratch"})
    torch.manual_seed(0)
    a, info = init_student(scratch, DATA, tmp_path)
    torch.manual_seed(0)
    b, _ = init_student(scratch, DATA, tmp_path)
    assert info == {"init": "scratch", "init_file": ""}
    torch.testing.assert_close(a.head.weight, b.head.weight)


def test_init_errors_name_the_problem_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(MaskpruneError, match="finetune.init 'models/nope' is not scratch.*run the stage"):
        init_student(params(finetune={"init": "models/nope"}), DATA, tmp_path)
    write_model(tmp_path / "other", cpu_params().models.teacher)
    with pytest.raises(MaskpruneError, match="holds a vit_teacher.*models.student is a vit_student"):
        init_student(params(finetune={"init": "other"}), DATA, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskpruneError, match="holds no meta.json: not a maskprune checkpoint"):
        init_student(params(finetune={"init": "empty"}), DATA, tmp_path)


def test_teacher_must_match_its_config_and_the_data(tmp_path: Path) -> None:
    teacher_dir = tmp_path / "models" / "teacher"
    write_model(teacher_dir, cpu_params().models.teacher)
    model, _ = load_teacher(cpu_params().models.teacher, DATA, tmp_path, torch.device("cpu"), STATS)
    assert model.embed_dim == 192
    changed = params(models={"teacher": {"drop_path_rate": 0.1}})
    with pytest.raises(MaskpruneError, match=r"models/teacher was trained as .* rerun `dvc repro teacher`"):
        load_teacher(changed.models.teacher, DATA, tmp_path, torch.device("cpu"), STATS)
    write_model(teacher_dir, cpu_params().models.teacher, data="cifar10")
    with pytest.raises(MaskpruneError, match="trained on 'cifar10', not on the prepared 'fashion_mnist'"):
        load_teacher(cpu_params().models.teacher, DATA, tmp_path, torch.device("cpu"), STATS)


def test_init_from_local_timm_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    source = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, num_classes=10)
    monkeypatch.chdir(tmp_path)  # NOTE: stages resolve pretrained/<file> in the repository, their working directory
    (tmp_path / "pretrained").mkdir()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, "pretrained/vit_tiny.safetensors")
    student = {"name": "vit_tiny_patch16_224", "pretrained_file": "pretrained/vit_tiny.safetensors"}
    model, info = init_student(
        params(models={"student": student}, finetune={"init": "pretrained_file"}), DATA, tmp_path
    )
    assert info == {"init": "pretrained_file", "init_file": "pretrained/vit_tiny.safetensors"}
    torch.testing.assert_close(model.blocks[0].mlp.fc1.weight, source.blocks[0].mlp.fc1.weight)
    torch.testing.assert_close(model.head.weight, source.head.weight)  # a head for the data's 10 classes is kept
