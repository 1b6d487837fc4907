"""The sharded storage: bytes, labels and split survive; resume; same pixels as memory; determinism; bad data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from maskprune.data.augment import shift_and_flip
from maskprune.data.loader import ShardLoader
from maskprune.data.sources import decode
from maskprune.data.storage import load_prepared
from maskprune.errors import MaskpruneError
from stages.prepare import prepare_dataset, shard_order
from tests.conftest import REPO, cpu_params, subprocess_env, updated
from tests.data.trees import CLASSES, image_tree, valid_png

DAC = "-dac_override,-dac_read_search"


def shard_data(root: Path, **changes: object):  # noqa: ANN201 - a DataSection
    base = {"name": "pets", "format": "imagefolder", "root": str(root), "val_fraction": 0.25, "storage": "shards"}
    return updated(cpu_params().data, **{**base, "image_size": 16, "shard_mb": 0.006, **changes})


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_tree(tmp_path_factory.mktemp("tree"), train_per_class=8, test_per_class=3)


@pytest.fixture(scope="module")
def prepared(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare_dataset(shard_data(tree), 0, out, log=lambda line: None, workers=2)
    return out / "pets"


def members(shard: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(shard) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def test_bytes_labels_and_split_survive_the_round_trip(tree: Path, prepared: Path) -> None:
    import webdataset as wds

    meta = yaml.safe_load((prepared / "meta.json").read_text())
    assert meta["storage"] == "shards" and meta["counts"] == {"train": 18, "val": 6, "test": 9}
    assert meta["image_shape"] == [3, 16, 16] and meta["classes"] == list(CLASSES)
    sources = {p.read_bytes(): (p.parts[-3], CLASSES.index(p.parent.name)) for p in tree.rglob("*.*")}
    seen: dict[str, list[bytes]] = {}
    for split in ("train", "val", "test"):
        shards = sorted(prepared.glob(f"{split}-*.tar"))
        assert len(shards) > 1  # small shards: the split spans several
        index = np.load(prepared / f"{split}.index.npy")
        rows = iter(index)
        for shard in shards:
            pairs = members(shard)
            for (image_name, data), (label_name, label) in zip(pairs[::2], pairs[1::2], strict=True):
                assert image_name.split(".")[0] == label_name.split(".")[0] and label_name.endswith(".cls")
                source_split, source_label = sources[data]  # the source's bytes, unchanged
                assert int(label) == source_label
                row = next(rows)
                with open(shard, "rb") as handle:
                    handle.seek(int(row["offset"]))
                    assert handle.read(int(row["size"])) == data and int(row["label"]) == source_label
                seen.setdefault(split, []).append(data)
                assert source_split == ("test" if split == "test" else "train")
        # WebDataset reads the shards as they are
        loaded = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False))
        assert [s["cls"] for s in loaded] == [str(int(r["label"])).encode() for r in index]
    train_files = {p.read_bytes() for p in (tree / "train").rglob("*.*")}
    assert set(seen["train"]) | set(seen["val"]) == train_files and not set(seen["train"]) & set(seen["val"])
    assert meta["shards"]["train"] == f"train-{{000000..{len(list(prepared.glob('train-*.tar'))) - 1:06d}}}.tar"


def test_mean_and_std_by_hand(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for name in CLASSES:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (6, 4), (10, 20, 30)).save(tmp_path / split / name / "a.png")
            Image.new("RGB", (6, 4), (30, 20, 10)).save(tmp_path / split / name / "b.png")
    meta = prepare_dataset(shard_data(tmp_path, val_fraction=0.01), 0, tmp_path / "out", log=lambda _: None)
    # train: 5 of the 6 images (one is val); 3 or 2 of each colour
    colours = np.array([[10, 20, 30], [30, 20, 10]], dtype=float)
    counts = meta["counts"]
    assert counts == {"train": 5, "val": 1, "test": 6}
    reader = load_prepared(tmp_path / "out/pets").splits["train"].reader
    pixels = np.stack([np.asarray(decode(reader.read(row)))[0, 0] for row in range(5)]).astype(float)
    assert set(map(tuple, pixels)) <= set(map(tuple, colours))
    np.testing.assert_allclose(meta["mean"], pixels.mean(axis=0) / 255, atol=1e-6)
    np.testing.assert_allclose(meta["std"], pixels.std(axis=0) / 255, atol=1e-6)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    wide = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "g.png")
    assert np.asarray(decode((tmp_path / "g.png").read_bytes()))[0, :, 0].tolist() == [0, 1, 128, 255]


def test_cut_off_prepare_resumes_and_ends_byte_identical(tree: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tree, tmp_path / "tree")
    corrupt = broken / "train/dog/00005.jpg"
    size = corrupt.stat().st_size
    corrupt.write_bytes(b"\xff\xd8 not a jpeg".ljust(size, b"\0"))
    out = tmp_path / "out"
    with pytest.raises(MaskpruneError, match=rf"{corrupt}: cannot read or decode the image .*skip_unreadable"):
        prepare_dataset(shard_data(broken), 0, out, log=lambda _: None, workers=1)
    work = out / ".pets.partial"
    done = sorted(p.stem for p in (work / ".progress").glob("*.npz"))
    assert done and not (out / "pets").exists()  # some shards finished; nothing final yet
    first = work / done[0]
    first.write_bytes(first.read_bytes()[:700])  # a shard cut off mid-write is not taken as done
    corrupt.write_bytes(valid_png(size))
    lines: list[str] = []
    prepare_dataset(shard_data(broken), 0, out, log=lines.append, workers=1)
    assert any(f"resuming: {len(done) - 1} of" in line for line in lines), lines
    prepare_dataset(shard_data(broken), 0, tmp_path / "again", log=lambda _: None, workers=2)
    resumed, again = sorted((out / "pets").iterdir()), sorted((tmp_path / "again/pets").iterdir())
    assert [p.name for p in resumed] == [p.name for p in again] and not work.exists()
    for a, b in zip(resumed, again, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_skip_unreadable_skips_and_lists(tree: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tree, tmp_path / "tree")
    (broken / "train/eel/00001.png").write_bytes(b"truncated")
    meta = prepare_dataset(shard_data(broken, skip_unreadable=True), 0, tmp_path / "out", log=lambda _: None)
    assert meta["skipped"] == {"count": 1, "files": [str(broken / "train/eel/00001.png")]}
    assert meta["counts"]["train"] + meta["counts"]["val"] == 23


def test_sharded_and_memory_storage_give_the_same_pixels(idx_root: Path, tmp_path: Path) -> None:
    data = {"root": str(idx_root), "image_size": 0, "shard_mb": 0.01}
    memory = load_prepared(_prepare(tmp_path / "m", storage="memory", **data))
    sharded = load_prepared(_prepare(tmp_path / "s", storage="shards", **data), workers=2)
    for split in ("train", "val", "test"):
        order = shard_order(len(memory.splits[split]), 0)
        everything = torch.arange(len(order))
        expected = memory.splits[split].images[torch.from_numpy(order)]
        assert torch.equal(sharded.splits[split].images_at(everything), expected)
        assert torch.equal(sharded.splits[split].labels, memory.splits[split].labels[torch.from_numpy(order)])
        _, images, labels = zip(*sharded.splits[split].batches(64, torch.device("cpu")), strict=True)
        assert torch.equal(torch.cat(images), expected)
    assert sharded.meta["mean"] == pytest.approx(memory.meta["mean"], abs=1e-6)
    assert sharded.meta["std"] == pytest.approx(memory.meta["std"], abs=1e-6)


def _prepare(out: Path, **data: object) -> Path:
    cfg = updated(cpu_params().data, **data)
    prepare_dataset(cfg, 0, out, log=lambda _: None, workers=2)
    return out / cfg.name


def test_batches_do_not_depend_on_processes_or_workers(tree: Path, prepared: Path) -> None:
    split = load_prepared(prepared).splits["train"]
    meta = yaml.safe_load((prepared / "meta.json").read_text())
    assert meta["view"]["train_crop"] == "shift"
    cpu = torch.device("cpu")
    loaders = {
        (workers, crop): ShardLoader(
            {"train": split.reader}, replace(split.loader.samples.view, train_crop=crop), workers
        )
        for workers in (0, 2)
        for crop in ("shift", "random_resized")
    }

    def epoch(rank: int, world: int, workers: int, crop: str, number: int = 0) -> list[torch.Tensor]:
        source = replace(split, loader=loaders[workers, crop])
        return [images for images, _ in source.train_batches(6, 7, number, cpu, True, rank, world)]

    for crop in ("shift", "random_resized"):
        one = epoch(0, 1, 0, crop)
        two = [epoch(rank, 2, 2, crop) for rank in (0, 1)]
        assert len(one) == 3 and all(torch.equal(a, torch.cat([b, c])) for a, b, c in zip(one, *two, strict=True))
        assert not torch.equal(torch.cat(one), torch.cat(epoch(0, 1, 0, crop, number=1)))


def test_loader_processes_serve_every_pass_and_survive_an_abandoned_one(prepared: Path) -> None:
    import psutil

    def descendants() -> set[int]:
        return {child.pid for child in psutil.Process().children(recursive=True)}

    split = load_prepared(prepared, workers=2).splits["train"]
    cpu = torch.device("cpu")
    expected = [images for images, _ in load_prepared(prepared).splits["train"].train_batches(4, 3, 0, cpu, True)]
    before = descendants()
    abandoned = split.train_batches(4, 3, 0, cpu, True)
    next(abandoned)
    del abandoned
    started = descendants() - before
    assert len(started) >= 2  # the loader processes (and the fork server, the first time)
    again = [images for images, _ in split.train_batches(4, 3, 0, cpu, True)]
    assert descendants() - before == started and all(map(torch.equal, again, expected))
    outer = split.train_batches(4, 3, 0, cpu, True)
    inner = [images for _, images, _ in split.batches(4, cpu)]  # a second pass while the first is read
    assert torch.equal(next(outer)[0], expected[0]) and torch.equal(torch.cat(inner), split.images_at(torch.arange(18)))


def test_a_model_is_evaluated_with_its_own_crop_pct(prepared: Path) -> None:
    from maskprune.data.augment import eval_crop
    from maskprune.models.vit import eval_crop_pct

    meta = yaml.safe_load((prepared / "meta.json").read_text())
    deit = cpu_params().models.student.model_copy(
        update={"name": "deit_small_patch16_224.fb_in1k", "pretrained_file": "pretrained/deit-s.safetensors"}
    )
    assert meta["view"]["eval_crop_pct"] == 1.0 and eval_crop_pct(deit, meta) == 0.9  # timm's config of DeiT-S
    assert eval_crop_pct(deit.model_copy(update={"normalize": "data"}), meta) == 1.0
    assert eval_crop_pct(cpu_params().models.student, meta) == 1.0
    assert eval_crop_pct(deit, {**meta, "storage": "memory"}) is None
    split = load_prepared(prepared, workers=1).splits["test"]
    _, images, _ = zip(*split.batches(4, torch.device("cpu"), crop_pct=0.9), strict=True)
    expected = [eval_crop(16, 0.9)(decode(split.reader.read(row))) for row in range(len(split))]
    assert torch.equal(torch.cat(images), torch.stack(expected))
    assert not torch.equal(torch.cat(images), split.images_at(torch.arange(len(split))))


def test_device_flip_equals_torchvision_hflip() -> None:
    from torchvision.transforms.functional import hflip

    images = torch.randint(0, 256, (3, 3, 5, 7), dtype=torch.uint8)
    flips = torch.tensor([True, False, True])
    out = shift_and_flip(images, torch.zeros(3, 2, dtype=torch.long), flips, pad=0)
    for image, flip, result in zip(images, flips, out, strict=True):
        assert torch.equal(result, hflip(image) if flip else image)


def test_webdataset_shards_are_a_source(prepared: Path, tmp_path: Path) -> None:
    root = tmp_path / "wds"
    for split, folder in (("train", "train"), ("val", "train"), ("test", "val")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for shard in prepared.glob(f"{split}-*.tar"):
            shutil.copy(shard, root / folder / f"{split}-{shard.name}")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    meta = prepare_dataset(shard_data(root, format="webdataset"), 1, tmp_path / "out", log=lambda _: None)
    assert meta["classes"] == list(CLASSES)
    assert meta["counts"]["train"] + meta["counts"]["val"] == 24 and meta["counts"]["test"] == 9


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("empty", r"train/eel: the class folder holds no images"),
        ("no_test", r"class\(es\) 'eel' have no test images"),
        ("extra_test", r"class folder\(s\) fox are not in"),
    ],
)
def test_bad_trees_are_one_line(tree: Path, tmp_path: Path, breakage: str, message: str) -> None:
    broken = shutil.copytree(tree, tmp_path / "tree")
    if breakage == "empty":
        shutil.rmtree(broken / "train/eel")
        (broken / "train/eel").mkdir()
    elif breakage == "no_test":
        shutil.rmtree(broken / "test/eel")
    else:
        shutil.copytree(broken / "test/eel", broken / "test/fox")
    with pytest.raises(MaskpruneError, match=message):
        prepare_dataset(shard_data(broken), 0, tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_class_folder_is_one_line_naming_it(tree: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tree, tmp_path / "tree")
    work = tmp_path / "work"
    work.mkdir()
    params = cpu_params().model_dump()
    params["data"].update(shard_data(broken).model_dump())
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / "dvc.yaml").write_text("stages: {}\n")
    (broken / "train/dog").chmod(0)
    unprivileged = ["setpriv", f"--bounding-set={DAC}", f"--inh-caps={DAC}"] if os.geteuid() == 0 else []
    env = subprocess_env(PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}")
    done = subprocess.run(
        [*unprivileged, sys.executable, "-m", "stages.prepare"], cwd=work, env=env, capture_output=True, text=True
    )
    (broken / "train/dog").chmod(0o755)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"maskprune: error: {broken / 'train/dog'}: cannot read") and "chmod" in line
    assert not (work / "data").exists()


def test_the_evaluation_crop_at_the_images_own_size_is_timms(tmp_path: Path) -> None:
    from maskprune.data.augment import eval_crop

    crop = eval_crop(16, 1.0)
    for side in (16, 24):  # the shortcut for images of the crop's size, and timm's resize otherwise
        folder = image_tree(tmp_path / str(side), 3, 2, side=side)
        prepare_dataset(shard_data(folder, eval_crop_pct=1.0, val_fraction=0.3), 0, folder / "out", log=lambda _: None)
        split = load_prepared(folder / "out/pets").splits["test"]
        for position in range(len(split)):
            image = decode(split.reader.read(position))
            assert torch.equal(split.images_at(torch.tensor([position]))[0], crop(image))
