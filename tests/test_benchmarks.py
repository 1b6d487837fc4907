"""The benchmark suite's pieces on tiny settings: every field present, ratios consistent with the
same-process measurements they come from. No test asserts a time."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks import engine, jobs, loader, mae, masked_teacher, orchestration, precision, pruning
from benchmarks.__main__ import main, run_parts
from benchmarks.common import PRESETS, BenchSetup, device_info
from benchmarks.summary import check_targets, markdown
from maskprune.measure import gmacs
from maskprune.profile import apply_sets, profile_params
from maskprune.runtime import Runtime
from tests.conftest import REPO

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, compile=False, progress=False)


@pytest.fixture(scope="module")
def setup() -> BenchSetup:
    return BenchSetup(CPU, profile_params("smoke", REPO), batch=4, warmup=1, repeats=2)


def test_pruning_rows_compare_each_pruned_model_with_the_unpruned_one(setup: BenchSetup) -> None:
    rows = pruning.run(setup)
    assert [(r["method"], r["keep_rate"]) for r in rows] == [
        ("evit", 0.5),
        ("dynamicvit", 0.5),
        ("tome", 0.5),
    ]
    tome = rows[2]
    assert len(tome["tome_schedule"]) == 6 and tome["gmacs"] == pytest.approx(rows[0]["gmacs"], rel=0.03)
    for row in rows:
        assert row["gmacs_ratio"] == pytest.approx(row["gmacs"] / row["gmacs_unpruned"])
        assert row["theoretical_speedup"] == pytest.approx(1 / row["gmacs_ratio"])
        assert row["speedup"] == pytest.approx(row["img_per_s"] / row["img_per_s_unpruned"])
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["theoretical_speedup"])
        assert 0.4 < row["gmacs_ratio"] < 0.7


def test_teacher_rows_scale_gmacs_with_the_keep_ratio(setup: BenchSetup) -> None:
    rows = masked_teacher.run(setup)
    assert [r["keep_ratio"] for r in rows] == [1.0, 0.75, 0.5, 0.25]
    assert [r["patches"] for r in rows] == [49, 36, 24, 12]
    assert rows[0]["time_ratio"] == 1.0 and rows[0]["gmacs_ratio"] == 1.0
    assert rows[2]["gmacs_ratio"] == pytest.approx(25 / 50, rel=0.1)  # [CLS] + 24 of 49 patches
    for row in rows:
        assert row["speedup"] == pytest.approx(1 / row["time_ratio"])


def test_engine_and_plain_loop_train_the_same_number_of_images(setup: BenchSetup) -> None:
    out = engine.run(setup, steps=2, rounds=2)
    assert out["rounds"] == 2 and len(out["engine_rounds"]) == len(out["plain_rounds"]) == 2
    assert out["engine_over_plain"] == pytest.approx(out["engine_img_per_s"] / out["plain_img_per_s"])
    assert all(v > 0 for v in out["engine_rounds"] + out["plain_rounds"])


def test_mae_step_costs_follow_the_visible_fraction(setup: BenchSetup) -> None:
    out = mae.run(setup)
    assert out["visible_patches"] == 12 and out["patches"] == 49
    assert out["encoder_flops_ratio"] == pytest.approx(13 / 50, rel=0.15)
    assert out["mae_flops_ratio"] < 1.0 and out["encoder_time_ratio"] > 0
    assert out["encoder_time_ratio"] == pytest.approx(out["encoder_step_s"] / out["encoder_step_s_unmasked"])


def test_orchestration_summary_by_hand_and_its_helpers(tmp_path: Path) -> None:
    rows = [
        {"stage": "a", "bare_s": 10.0, "dvc_mlflow_s": 12.0},
        {"stage": "b", "bare_s": 20.0, "dvc_mlflow_s": 23.0},
    ]
    summary = orchestration.overhead_summary(rows, prefect_total=40.0)
    assert summary == {
        "bare_total_s": 30.0,
        "dvc_mlflow_total_s": 35.0,
        "prefect_total_s": 40.0,
        "dvc_mlflow_overhead_s": 5.0,
        "prefect_overhead_s": 5.0,
        "overhead_fraction": 0.25,
    }
    assert orchestration.stage_command("prune@evit-full-0.5")[-2:] == ["stages.prune", "evit-full-0.5"]
    assert orchestration.stage_command("teacher")[-1] == "stages.teacher"
    assert orchestration.timed([sys.executable, "-c", "pass"], tmp_path, {}) > 0
    with pytest.raises(RuntimeError, match="failed"):
        orchestration.timed([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, {})
    assert orchestration.missing_tools() == []  # the test environment has the orchestration layer


def test_targets_apply_per_device_and_read_the_measurements() -> None:
    results = {
        "device": {"type": "cpu"},
        "pruning": [{"method": "evit", "keep_rate": 0.5, "efficiency": 0.92}],
        "teacher": [{"keep_ratio": 0.5, "time_ratio": 0.6}],
        "engine": {"engine_over_plain": 1.01},
    }
    checked = {t["target"]: t for t in check_targets(results)}
    assert len(checked) == 3  # the CUDA EViT target and the unmeasured orchestration target do not apply
    evit = checked["EViT keep 0.5: efficiency (measured / theoretical speed-up)"]
    assert evit["met"] and evit["required"] == ">= 0.9"
    assert not checked["MaskedKD teacher at keep 0.5: time / keep-1.0 time"]["met"]
    assert checked["training engine img/s / plain loop img/s"]["met"]


def test_cli_writes_json_and_markdown_with_every_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    main(
        [
            "--parts",
            "teacher",
            "--device",
            "cpu",
            "--profile",
            "smoke",
            "--batch",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    slug = device_info(CPU)["slug"]
    results = json.loads((tmp_path / f"{slug}.json").read_text())
    assert {"device", "setup", "measured_at", "teacher", "targets"} <= set(results)
    assert {"batch", "dtype", "threads", "warmup", "repeats", "modes", "timing"} <= set(results["setup"])
    assert results["setup"]["batch"] == 2 and results["device"]["type"] == "cpu"
    text = (tmp_path / f"{slug}.md").read_text()
    assert "## 2. MaskedKD teacher forward by keep ratio" in text and "## Targets" in text
    assert markdown(results).startswith("# Benchmarks: ")


def test_every_row_carries_its_mode_and_an_a_a_control(setup: BenchSetup) -> None:
    compiled = replace(setup, mode="compile")
    assert compiled.compile and not setup.compile
    for row in pruning.run(setup) + masked_teacher.run(setup):
        assert row["mode"] == "eager"
        assert row.get("aa_speedup", row.get("aa_time_ratio")) > 0


def test_a_spent_budget_skips_and_lists_every_part(setup: BenchSetup) -> None:
    out = run_parts(replace(setup, modes=["eager", "compile"]), ["teacher", "engine"], REPO, "smoke", budget_s=1e-9)
    assert out["skipped"] == [
        {"part": "teacher", "mode": "eager", "reason": "time budget of 1e-09 s spent"},
        {"part": "engine", "mode": "eager", "reason": "time budget of 1e-09 s spent"},
        {"part": "teacher", "mode": "compile", "reason": "time budget of 1e-09 s spent"},
    ]  # engine runs once, in the first mode
    assert "teacher" not in out and "engine" not in out


def test_targets_are_checked_per_mode() -> None:
    results = {
        "device": {"type": "cuda"},
        "teacher": [
            {"mode": "eager", "keep_ratio": 0.5, "time_ratio": 0.58},
            {"mode": "graph", "keep_ratio": 0.5, "time_ratio": 0.54},
        ],
    }
    checked = {t["target"]: t["met"] for t in check_targets(results)}
    assert checked == {
        "MaskedKD teacher at keep 0.5: time / keep-1.0 time [eager]": False,
        "MaskedKD teacher at keep 0.5: time / keep-1.0 time [graph]": True,
    }


def test_paper_preset_builds_the_papers_models() -> None:
    params = apply_sets(profile_params("cpu", REPO), PRESETS["paper"].sets)
    bench = BenchSetup(CPU, params, batch=1, warmup=1, repeats=1, in_chans=3, num_classes=1000)
    one = bench.images(1)
    assert one.shape == (1, 3, 224, 224)
    # DeiT paper, Table 1: DeiT-S 4.6 and DeiT-B 17.6 G multiply-adds at 224 px
    assert gmacs(bench.student(), one) == pytest.approx(4.6, rel=0.01)
    assert gmacs(bench.teacher(), one) == pytest.approx(17.6, rel=0.01)
    assert params.prune.keep_rates == [0.7, 0.5]


def test_precision_rows_compare_fp32_and_bf16(setup: BenchSetup) -> None:
    out = precision.run(replace(setup, repeats=1))
    assert [r["model"] for r in out["inference"]] == ["student", "teacher"]
    for row in out["inference"]:
        assert row["bf16_speedup"] == pytest.approx(row["bf16_img_per_s"] / row["fp32_img_per_s"])
    combos = {(r["batch"], r["dtype"], r["channels_last"], r["compile"]) for r in out["training"]}
    assert combos == {(b, d, c, False) for b in (4, 16) for d in ("fp32", "bf16") for c in (False, True)}
    assert isinstance(out["native_bf16"], bool)


def test_graph_modes_need_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as stop:
        main(["--parts", "teacher", "--device", "cpu", "--modes", "graph", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "CUDA graphs need a CUDA device" in capsys.readouterr().err


def test_jobs_workers_run_as_processes_and_report_their_summed_throughput(setup: BenchSetup) -> None:
    config = {
        "spec": setup.params.models.student.model_dump(),
        "in_chans": setup.in_chans,
        "num_classes": setup.num_classes,
        "batch": 2,
        "warmup": 1,
        "steps": 2,
    }
    assert jobs.timed_round(config, workers=2, threads=1) > 0
    broken = {**config, "spec": {**config["spec"], "name": "no_such_model"}}
    with pytest.raises(RuntimeError, match="a benchmark worker exited with 1"):
        jobs.timed_round(broken, workers=1, threads=1)


@pytest.mark.parametrize(
    ("rounds", "speedup", "aa", "worst", "best"),
    [
        # (one job, two jobs, one job again) per round; medians 100, 190, 96 (a host slowing down)
        ([(100, 190, 96), (90, 185, 85), (120, 195, 100)], 190 / 98, 0.96, 195 / 120, 2),
        # two jobs lose one round to the one-job timing after it: one job
        ([(100, 190, 96), (90, 105, 110), (120, 195, 100)], 190 / 100, 1.0, 105 / 110, 1),
    ],
)
def test_jobs_win_only_when_they_beat_both_one_job_timings_of_every_round(
    setup: BenchSetup,
    monkeypatch: pytest.MonkeyPatch,
    rounds: list[tuple[float, float, float]],
    speedup: float,
    aa: float,
    worst: float,
    best: int,
) -> None:
    values = iter(float(v) for round_ in rounds for v in round_)
    calls = []

    def timed_round(config: dict, workers: int, threads: int) -> float:
        calls.append((workers, threads))
        return next(values)

    monkeypatch.setattr(jobs, "timed_round", timed_round)
    monkeypatch.setattr(jobs, "cores", lambda: 2)
    out = jobs.run(replace(setup, repeats=2))
    assert calls == [(1, 2), (2, 1), (1, 2)] * 3
    assert out["jobs_speedup"] == pytest.approx(speedup)
    assert out["aa_ratio"] == pytest.approx(aa) and out["noisy"] is False
    assert out["worst_round_speedup"] == pytest.approx(worst)
    assert out["best_jobs"] == best
    summary = markdown({"device": device_info(CPU), "setup": setup.describe(), "jobs": out})
    assert f"Most seeds per hour: `--jobs {best}`" in summary


def test_loader_part_reports_decode_rate_and_the_loader_over_memory_ratio(
    setup: BenchSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "DECODE_IMAGES", 8)
    monkeypatch.setattr(loader, "FEED_IMAGES", 40)
    monkeypatch.setattr(loader, "ROUNDS", 1)
    out = loader.run(setup)
    decode, feed = out["decode"], out["feed"]
    checked = {t["target"]: t for t in check_targets({"device": {"type": "cpu"}, "loader": out})}
    assert len(checked) == 2 and all(t["value"] > 0 for t in checked.values())
    assert decode["images"] == 5  # 6 of the 8 are in train/, one of them held out for validation
    assert decode["img_per_s_per_core"] > 0 and decode["prepare_img_per_s_per_core"] > 0
    assert sorted(feed) == ["workers_0", "workers_1", "workers_2"]
    for workers, one in feed.items():
        (round_,) = one["rounds"]
        assert one["loader_over_memory"] == pytest.approx(round_["loader"] / round_["memory"])
        assert one["images"] == (39 // setup.batch) * setup.batch and 0.0 <= one["data_wait"] < 1.0
        assert workers == f"workers_{one['workers']}"
    text = markdown({"device": device_info(CPU), "setup": setup.describe(), "loader": out})
    assert "## 8. The sharded data path" in text
