"""The training engine: schedule, resume after a kill, non-finite stop, DDP equivalence."""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from maskprune.checkpoint import STATE_FILE, unwrap
from maskprune.config import TrainSection
from maskprune.data.loader import Normalizer
from maskprune.data.sources import RawSplits
from maskprune.data.storage import MemorySplit, PreparedData, load_prepared
from maskprune.errors import MaskpruneError
from maskprune.masking import HybridRatios
from maskprune.models.vit import TokenViT, build_model
from maskprune.objectives.classification import ClassificationObjective
from maskprune.objectives.masked_finetune import MaskedFinetuneObjective
from maskprune.objectives.masked_kd import TeacherView
from maskprune.runtime import Runtime
from maskprune.trainer import BackboneLR, fit, group_schedules, param_groups, warmup_cosine
from stages.prepare import prepare_shards
from tests.conftest import cpu_params, updated

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, compile=False, progress=False)

KD = cpu_params().finetune.kd  # alpha 0.5, temperature 1, soft labels

CFG = TrainSection(
    epochs=3,
    batch_size=32,
    lr=3e-3,
    min_lr=1e-4,
    weight_decay=0.05,
    warmup_epochs=0.5,
    label_smoothing=0.1,
    grad_clip=1.0,
    augment=True,
    mixup=0.0,
    cutmix=0.0,
    random_erasing=0.0,
    repeated_aug=1,
)


def tiny_data(n_train: int = 96, n_val: int = 40) -> PreparedData:
    gen = torch.Generator().manual_seed(1)

    def split(n: int) -> MemorySplit:
        labels = torch.arange(n) % 4
        images = torch.randint(0, 60, (n, 1, 12, 12), generator=gen, dtype=torch.uint8)
        images[torch.arange(n), 0, labels * 3, :] = 250  # a learnable stripe per class
        return MemorySplit(images, labels)

    meta = {"num_classes": 4, "image_shape": [1, 12, 12], "mean": [0.3], "std": [0.3], "name": "tiny"}
    return PreparedData(root=Path("."), meta=meta, splits={"train": split(n_train), "val": split(n_val)})


def tiny_shards(root: Path) -> Path:
    """`tiny_data`'s images in the sharded storage, cropped at random (random-resized, 50-100% of the area)."""
    data = tiny_data(n_train=136, n_val=40)
    train, test = data.splits["train"], data.splits["val"]
    raw = RawSplits(train.images.numpy(), train.labels.numpy(), test.images.numpy(), test.labels.numpy(), tuple("0123"))
    crops = {"train_crop": "random_resized", "crop_scale": [0.5, 1.0], "image_size": 0, "shard_mb": 0.01}
    cfg = updated(
        cpu_params().data, name="tiny", storage="shards", val_fraction=0.3, train_limit=0, test_limit=0, **crops
    )
    prepare_shards(cfg, 0, root, raw, log=lambda _: None, workers=1)
    return root / "tiny"


def tiny_model() -> TokenViT:
    torch.manual_seed(0)
    return TokenViT(img_size=12, patch_size=4, in_chans=1, num_classes=4, embed_dim=16, depth=2, num_heads=2)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in unwrap(model).state_dict().items()}


def test_warmup_cosine_by_hand() -> None:
    f = warmup_cosine(total_steps=10, warmup_steps=2, min_ratio=0.1)
    assert [f(0), f(1), f(2)] == [0.5, 1.0, 1.0]
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(10) == pytest.approx(0.1)
    assert f(8) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.75)))


def test_no_weight_decay_on_norms_biases_and_tokens() -> None:
    model = tiny_model()
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.05)
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "pos_embed", "blocks.0.norm1.weight", "head.bias"} <= skipped
    assert "blocks.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}


def test_fit_learns_and_records_history(tmp_path: Path) -> None:
    model = tiny_model()
    history = fit(
        model,
        tiny_data(),
        CFG,
        ClassificationObjective(0.1),
        CPU,
        seed=0,
        state_dir=tmp_path,
        config_hash="h",
        log=lambda line: None,
    )
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert set(history[0]) == {
        "epoch",
        "train_loss",
        "val_top1",
        "lr",
        "img_per_s",
        "seconds",
        "data_wait",
        "training_bf16",
        "inference_bf16",
    }
    assert {(r["training_bf16"], r["inference_bf16"]) for r in history} == {(0.0, 0.0)}  # fp32 throughout
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["lr"] == pytest.approx(CFG.min_lr)
    assert json.loads((tmp_path / STATE_FILE).read_text())["epoch"] == 3


def test_fit_states_a_resize_and_is_silent_without_one(tmp_path: Path) -> None:
    lines: list[str] = []
    model = TokenViT(img_size=16, patch_size=4, in_chans=1, num_classes=4, embed_dim=16, depth=1, num_heads=2)
    data = tiny_data()
    to_16 = Normalizer(data.meta["mean"], data.meta["std"], 16, CPU.device)
    fit(model, data, CFG, ClassificationObjective(0.1), CPU, 0, tmp_path / "a", "h", "student", to_16, lines.append)
    assert "student: 12x12 images are resized to 16x16 (bilinear) for this model" in lines
    quiet: list[str] = []
    fit(tiny_model(), tiny_data(), CFG, ClassificationObjective(0.1), CPU, 0, tmp_path / "b", "h", log=quiet.append)
    assert not any("resized" in line for line in quiet)


class Killed(Exception):
    pass


@pytest.mark.parametrize("storage", ["memory", "shards"])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path, storage: str) -> None:
    shards = tiny_shards(tmp_path / "prepared") if storage == "shards" else None

    def data() -> PreparedData:  # shards: random-resized crops decoded by a loader process
        return load_prepared(shards, workers=1) if shards else tiny_data()

    straight = tiny_model()
    fit(
        straight,
        data(),
        CFG,
        ClassificationObjective(0.1),
        CPU,
        0,
        tmp_path / "a",
        "h",
        log=lambda s: None,
    )

    def kill_after_epoch_1(line: str) -> None:
        if " epoch 1 " in line:
            raise Killed

    interrupted = tiny_model()
    with pytest.raises(Killed):
        fit(
            interrupted,
            data(),
            CFG,
            ClassificationObjective(0.1),
            CPU,
            0,
            tmp_path / "b",
            "h",
            log=kill_after_epoch_1,
        )
    assert json.loads((tmp_path / "b" / STATE_FILE).read_text())["epoch"] == 1
    resumed, lines = tiny_model(), []
    history = fit(resumed, data(), CFG, ClassificationObjective(0.1), CPU, 0, tmp_path / "b", "h", log=lines.append)
    assert lines[0].startswith("train: resuming after epoch 1")
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for key, value in weights(straight).items():
        torch.testing.assert_close(weights(resumed)[key], value, rtol=0, atol=0)


def test_a_resume_on_a_host_with_bf16_inference_records_its_epochs_as_such(tmp_path: Path) -> None:
    """runtime.amp 'auto' gives bf16 inference on a CPU with native bf16: a seed resumed on such a host
    validates its remaining epochs there, and its history says which."""

    def kill_after_epoch_1(line: str) -> None:
        if " epoch 1 " in line:
            raise Killed

    with pytest.raises(Killed):
        fit(tiny_model(), tiny_data(), CFG, ClassificationObjective(0.1), CPU, 0, tmp_path, "h", log=kill_after_epoch_1)
    bf16_host = replace(CPU, inference_amp_dtype=torch.bfloat16)
    history = fit(
        tiny_model(), tiny_data(), CFG, ClassificationObjective(0.1), bf16_host, 0, tmp_path, "h", log=lambda s: None
    )
    assert [(r["training_bf16"], r["inference_bf16"]) for r in history] == [(0.0, 0.0), (0.0, 1.0), (0.0, 1.0)]


def test_state_for_another_config_is_not_resumed(tmp_path: Path) -> None:
    fit(
        tiny_model(),
        tiny_data(),
        CFG,
        ClassificationObjective(0.1),
        CPU,
        0,
        tmp_path,
        "old",
        log=lambda s: None,
    )
    lines: list[str] = []
    fit(
        tiny_model(),
        tiny_data(),
        CFG,
        ClassificationObjective(0.1),
        CPU,
        0,
        tmp_path,
        "new",
        log=lines.append,
    )
    assert not any("resuming" in line for line in lines)


def test_non_finite_loss_stops_with_clear_error_and_keeps_last_good_state(tmp_path: Path) -> None:
    calls = {"n": 0}
    base = ClassificationObjective(0.0)

    def explodes_in_epoch_2(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = base(model, images, labels)
        return loss * float("nan") if calls["n"] > 4 else loss

    with pytest.raises(MaskpruneError, match=r"non-finite in epoch 2.*epoch 1\) is kept.*lower train.lr"):
        fit(tiny_model(), tiny_data(), CFG, explodes_in_epoch_2, CPU, 0, tmp_path, "h", log=lambda s: None)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["epoch"] == 1
    tensors = load_file(str(tmp_path / state["tensors"]))
    assert all(torch.isfinite(t).all() for t in tensors.values())


def test_batch_larger_than_data_is_a_clear_error(tmp_path: Path) -> None:
    cfg = CFG.model_copy(update={"batch_size": 1000})
    with pytest.raises(MaskpruneError, match="batch_size 1000 exceeds the 96 training images"):
        fit(tiny_model(), tiny_data(), cfg, ClassificationObjective(), CPU, 0, tmp_path, "h")


def masked_kd_objective(world_size: int = 1) -> MaskedFinetuneObjective:
    """A fixed student keep (so every process runs the same token counts), MaskedKD teacher."""
    torch.manual_seed(5)
    teacher = TokenViT(img_size=12, patch_size=4, in_chans=1, num_classes=4, embed_dim=24, depth=2, num_heads=2)
    return MaskedFinetuneObjective(
        9, HybridRatios([0.5], [1.0]), TeacherView(teacher, 0.5, "student_attn"), KD, 0.1, world_size
    )


def _ddp_worker(rank: int, world: int, port: int, out: str, masked: bool = False, shards: str = "") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    runtime = Runtime(torch.device("cpu"), None, False, False, rank=rank, world_size=world)
    model = tiny_model()
    cfg = CFG.model_copy(update={"epochs": 2})
    objective = masked_kd_objective(world) if masked else ClassificationObjective(0.1)
    data = load_prepared(shards, workers=1) if shards else tiny_data()
    history = fit(model, data, cfg, objective, runtime, 0, Path(out) / "state", "h", log=lambda s: None)
    if rank == 0:
        Path(out, "history.json").write_text(json.dumps(history))
        save_file({k: v.contiguous() for k, v in weights(model).items()}, str(Path(out, "w.safetensors")))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("storage", ["memory", "shards"])
def test_ddp_two_gloo_processes_match_one_process_with_same_global_batch(tmp_path: Path, storage: str) -> None:
    shards = str(tiny_shards(tmp_path / "prepared")) if storage == "shards" else ""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path), False, shards), nprocs=2, join=True)
    single = tiny_model()
    history = fit(
        single,
        load_prepared(shards, workers=1) if shards else tiny_data(),
        CFG.model_copy(update={"epochs": 2}),
        ClassificationObjective(0.1),
        CPU,
        0,
        tmp_path / "single",
        "h",
        log=lambda s: None,
    )
    ddp_history = json.loads((tmp_path / "history.json").read_text())
    for one, two in zip(history, ddp_history, strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
        assert two["val_top1"] == pytest.approx(one["val_top1"])
    ddp_weights = load_file(str(tmp_path / "w.safetensors"))
    for key, value in weights(single).items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=1e-4, atol=1e-5)


def test_masked_kd_under_ddp_counts_the_cost_of_every_process(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path), True), nprocs=2, join=True)
    single = fit(
        tiny_model(),
        tiny_data(),
        CFG.model_copy(update={"epochs": 2}),
        masked_kd_objective(),
        CPU,
        0,
        tmp_path / "single",
        "h",
        log=lambda s: None,
    )
    ddp = json.loads((tmp_path / "history.json").read_text())
    for one, two in zip(single, ddp, strict=True):
        assert two["student_keep_mean"] == one["student_keep_mean"] == pytest.approx(4 / 9)
        assert two["train_gflops"] == pytest.approx(one["train_gflops"], rel=1e-9)  # same images, same tokens
        assert two["teacher_gmacs_per_image"] == pytest.approx(one["teacher_gmacs_per_image"], rel=1e-9)
        assert math.isfinite(two["train_loss"])


def test_backbone_learns_slower_and_waits_for_the_freeze() -> None:
    model = build_model(cpu_params().models.student, 10, 1)
    model.score_predictor = torch.nn.Linear(4, 2)
    backbone = BackboneLR(("score_predictor.",), scale=0.01, freeze_epochs=1.0)
    groups = param_groups(model, 0.05, backbone)
    new = [g for g in groups if not g["backbone"]]
    assert sum(len(g["params"]) for g in new) == 2  # the new module's weight and bias
    assert {g["weight_decay"] for g in new} == {0.05, 0.0}
    schedules = group_schedules(groups, lambda step: 1.0, steps_per_epoch=10, backbone=backbone)
    for group, schedule in zip(groups, schedules, strict=True):
        expected = (0.0, 0.01) if group["backbone"] else (1.0, 1.0)
        assert (schedule(9), schedule(10)) == expected
