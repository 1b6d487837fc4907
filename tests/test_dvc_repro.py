"""The smoke profile through real DVC commands in a temporary copy of the repository."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from maskprune.config import FINETUNE_VARIANTS
from maskprune.probe import TIMM_POOL
from maskprune.profile import profile_params
from tests.conftest import DISTILLED, PRETRAINED, PRUNED, REPO, STAGES, copy_run, run, subprocess_env
from tests.services import require

pytestmark = pytest.mark.integration
VARIANTS = FINETUNE_VARIANTS


def test_repro_writes_every_output(smoke_repo: Path) -> None:
    teacher = smoke_repo / "models" / "teacher"
    assert sorted(p.name for p in teacher.iterdir() if not p.name.startswith(".")) == [
        "history.csv",
        "meta.json",
        "metrics.json",
        "model.safetensors",
    ]
    history = pd.read_csv(teacher / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    report = json.loads((smoke_repo / "metrics" / "evaluate.json").read_text())
    entry = report["models"]["teacher"]
    assert 0.0 <= entry["top1"] <= 1.0 and entry["params_m"] > 0
    assert 0.13 < entry["gmacs"] < 0.15  # vit_teacher at 28x28 / patch 4: 0.139 GMACs by hand
    student = report["models"]["finetune/full"]  # every ratio's reference: the unpruned student
    assert entry["gmacs_ratio"] == pytest.approx(entry["gmacs"] / student["gmacs"]) and entry["gmacs_ratio"] > 1
    assert student["gmacs_ratio"] == pytest.approx(1.0)
    assert entry["throughput_ratio"] > 0  # no bound: a timing under load is the benchmark suite's job
    occlusion = model_rows(smoke_repo / "plots" / "evaluate" / "occlusion.csv", "teacher")
    assert list(occlusion["drop_fraction"]) == [0.0, 0.5, 0.9]
    assert list(occlusion["kept_patches"]) == [49, 24, 4]
    assert occlusion["top1"].iloc[0] == pytest.approx(entry["top1"])
    assert not list(smoke_repo.rglob("*.tmp")), "temporary files left behind"


@pytest.mark.parametrize("name", PRETRAINED)
def test_every_pretrain_variant_records_its_curves_and_is_measured_as_a_probe(smoke_repo: Path, name: str) -> None:
    folder = smoke_repo / "models" / "pretrain" / name
    objective, loss = name.split("-")
    meta = json.loads((folder / "meta.json").read_text())
    probe_pool = TIMM_POOL[profile_params("smoke", smoke_repo).pretrain.probe.pool]
    assert meta["objective"] == objective and meta["loss"] == loss and meta["global_pool"] == probe_pool
    assert (folder / "mim.safetensors").is_file()
    history = pd.read_csv(folder / "history.csv")
    layers = 3 if objective == "mae" else 7  # MAE: decoder input + 2 blocks; SimMIM: encoder input + 6 blocks
    expected = {"rec_loss", "mto_spa", "mto_e", "mto_r", "probe_top1", *(f"h_{i}" for i in range(layers))}
    assert expected <= set(history.columns) and f"h_{layers}" not in history.columns
    assert list(history["epoch"]) == [1, 2] and history[list(expected)].notna().all().all()
    if loss == "baseline":  # without MTO the objective is the reconstruction loss alone
        assert history["train_loss"].tolist() == pytest.approx(history["rec_loss"].tolist())
    else:
        assert (history["train_loss"] > history["rec_loss"]).all()
    metrics = json.loads((folder / "metrics.json").read_text())
    ratio = 13 / 50 if objective == "mae" else 1.0  # MAE's encoder runs on [CLS] + 12 of 49 patches
    assert metrics["encoder_gmacs_ratio"] == pytest.approx(ratio, rel=0.15)
    report = json.loads((smoke_repo / "metrics" / "evaluate.json").read_text())
    # evaluate measures the saved encoder + probe head on the same test split the probe was scored on
    assert report["models"][f"pretrain/{name}"]["top1"] == pytest.approx(metrics["probe_top1"], abs=0.005)


def test_mto_comparison_per_objective(smoke_repo: Path) -> None:
    report = json.loads((smoke_repo / "metrics" / "evaluate.json").read_text())
    rows = {row["objective"]: row for row in report["mto"]}
    assert sorted(rows) == ["mae"]
    for objective, row in rows.items():
        assert "rauc_1_2" in row and row["epochs"] == 2
        assert len(row["baseline_h"]) == len(row["mto_h"]) == 3  # MAE: decoder input + 2 blocks
        assert row["mto_minus_baseline_final"] == pytest.approx(row["mto_final_top1"] - row["baseline_final_top1"])
        for loss in ("baseline", "mto"):
            curve = model_rows(smoke_repo / "plots" / "evaluate" / "pretrain.csv", f"{objective}-{loss}")
            assert list(curve["epoch"]) == [1, 2]
            assert curve["probe_top1"].iloc[-1] == pytest.approx(row[f"{loss}_final_top1"])
            layers = model_rows(smoke_repo / "plots" / "evaluate" / "heterogeneity.csv", f"{objective}-{loss}")
            assert list(layers["h"]) == pytest.approx(row[f"{loss}_h"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_finetune_variant_trains_reports_cost_and_gets_an_occlusion_curve(smoke_repo: Path, variant: str) -> None:
    folder = smoke_repo / "models" / "finetune" / variant
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["stage"] == f"finetune@{variant}" and meta["role"] == "student"
    assert meta["init"] == "models/pretrain/mae-baseline"  # the default init: the baseline MAE encoder
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["train_images"] == 1080 and metrics["epochs"] == 1
    history = pd.read_csv(folder / "history.csv")
    assert metrics["train_tflops"] == pytest.approx(history["train_gflops"].sum() / 1e3)
    full_teacher = 0.1386  # vit_teacher on all 49 patches, as evaluate measures it
    full_student = 0.0629  # vit_student on all 49 patches: the fine-tuned `full` arm teaches `masked`
    expected = {  # arm -> (mean fraction of patches the student saw, teacher GMACs per image)
        "full": (1.0, None),  # labels only
        "full_kd": (1.0, full_teacher),
        "masked_kd": (1.0, full_teacher * 37 / 50),  # teacher on [CLS] + 36 of 49 patches (keep 0.75)
        "random_kd": (1.0, full_teacher * 37 / 50),  # as many patches, drawn at random
        "masked": (None, full_student),  # the student's keep ratio drawn per batch from {1, .75, .5, .25}
    }[variant]
    if expected[0] is not None:
        assert metrics["student_keep_mean"] == pytest.approx(expected[0])
    else:
        assert 0.25 < metrics["student_keep_mean"] < 1.0
    if expected[1] is None:
        assert "teacher_gmacs_per_image" not in metrics
    else:
        assert metrics["teacher_gmacs_per_image"] == pytest.approx(expected[1], rel=0.1)
        assert metrics["teacher_throughput_ratio"] > 0 and metrics["teacher_aa_ratio"] > 0
    report = json.loads((smoke_repo / "metrics" / "evaluate.json").read_text())
    assert f"finetune/{variant}" in report["models"]
    curve = model_rows(smoke_repo / "plots" / "evaluate" / "occlusion.csv", f"finetune/{variant}")
    assert list(curve["drop_fraction"]) == [0.0, 0.5, 0.9]
    assert curve["top1"].iloc[0] == pytest.approx(report["models"][f"finetune/{variant}"]["top1"])


@pytest.mark.parametrize("name", PRUNED)
def test_every_pruned_model_drops_tokens_and_is_evaluated_with_its_tome_match(smoke_repo: Path, name: str) -> None:
    folder = smoke_repo / "models" / "prune" / name
    method, init, keep = name.split("-")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["pruning"]["method"] == method and meta["pruning"]["blocks"] == [1, 3, 4] and meta["init"] == init
    metrics = json.loads((folder / "metrics.json").read_text())
    report = json.loads((smoke_repo / "metrics" / "evaluate.json").read_text())
    entry = report["models"][f"prune/{name}"]
    assert entry["gmacs"] == pytest.approx(metrics["gmacs"]) and entry["throughput_ratio"] > 0
    assert entry["aa_ratio"] > 0, "every throughput ratio comes with its A/A control"
    if keep == "1.0":  # the sham arm: the recipe, nothing dropped (DynamicViT still runs its scorers)
        assert meta["tokens_per_block"] == [50] * 6 and f"tome/{init}-{name}" not in report["models"]
        assert metrics["gmacs_ratio"] == pytest.approx(1.0 if method == "evit" else 1.062, abs=0.01)
        return
    # vit_student, 49 patches at keep 0.5: EViT 49 -> 25 (+1 fused) -> 13 (+1) -> 7 (+1); DynamicViT 24, 12, 6
    expected = [50, 27, 27, 15, 9, 9] if method == "evit" else [50, 25, 25, 13, 7, 7]
    assert meta["tokens_per_block"] == expected
    assert 0.4 < metrics["gmacs_ratio"] < 0.6 and metrics["train_images"] == 1080
    if method == "dynamicvit":  # the realised keep ratio of the last stage and its target, for the report's check
        assert metrics["train_kept_target"] == pytest.approx(0.125) and 0 < metrics["train_kept_fraction"] <= 1
    tome = report["models"][f"tome/{init}-{name}"]
    assert tome["matched_to"] == name, "every pruned model has its own ToMe baseline at matched GMACs"
    assert tome["gmacs"] == pytest.approx(entry["gmacs"], rel=0.03) and abs(tome["gmacs_gap"]) <= 0.03
    row = next(r for r in report["pruning"] if r["method"] == method and r["keep_rate"] == 0.5)
    assert row[f"{init}_top1"] == entry["top1"]
    assert row["masked_minus_full"] == pytest.approx(row["masked_top1"] - row["full_top1"])


def test_task_agnostic_students_are_probed_and_fine_tuned(smoke_repo: Path) -> None:
    report = json.loads((smoke_repo / "metrics" / "evaluate.json").read_text())
    rows = {(r["student"], r["target"]): r for r in report["task_agnostic"]}
    assert sorted(f"{s}-{t}" for s, t in rows) == sorted(DISTILLED)
    for name in DISTILLED:
        metrics = json.loads((smoke_repo / "models" / "distill" / name / "metrics.json").read_text())
        assert metrics["distill_images"] == 1080 and 0.0 <= metrics["probe_val_top1"] <= 1.0
        probe = json.loads((smoke_repo / "models" / "distill" / name / "probe" / "meta.json").read_text())
        assert probe["eval"] == "probe" and ("pruning" in probe) == name.startswith("evit")
    assert rows[("evit", "cls_tokens")]["gmacs"] < 0.6 * rows[("vit", "cls_tokens")]["gmacs"]
    assert rows[("vit", "cls_tokens")]["params_m"] == pytest.approx(rows[("evit", "cls_tokens")]["params_m"])


def test_second_repro_skips_every_stage(smoke_repo: Path) -> None:
    out = run(["dvc", "repro"], smoke_repo).stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert "up to date" in run(["dvc", "status"], smoke_repo).stdout


def model_rows(path: Path, model: str) -> pd.DataFrame:
    """The rows of `model` in a long-form plot CSV."""
    table = pd.read_csv(path)
    return table[table["model"] == model].reset_index(drop=True)


class ResourceLinks(HTMLParser):
    """Every src/href attribute of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]


def network_links(html: str) -> list[str]:
    """The src/href attributes of `html` that a browser would fetch over the network."""
    parser = ResourceLinks()
    parser.feed(html)
    return [link for link in parser.links if re.match(r"(https?:)?//", link)]


def test_dvc_views_work(smoke_repo: Path, tmp_path: Path) -> None:
    dag = run(["dvc", "dag", "--md"], smoke_repo).stdout
    assert all(stage in dag for stage in STAGES)
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], smoke_repo).stdout)
    workspace = next(iter(metrics.values()))["data"]  # keyed by revision ('' = workspace)
    assert sorted(workspace) == ["metrics/headline.json", "metrics/verdicts.json"]  # the headline set only
    models = json.loads((smoke_repo / "metrics" / "evaluate.json").read_text())["models"]
    headline = workspace["metrics/headline.json"]["data"]
    assert sorted(headline) == sorted(models)
    assert headline["teacher"]["top1"] == models["teacher"]["top1"]
    verdicts = workspace["metrics/verdicts.json"]["data"]
    summary = json.loads((smoke_repo / "reports" / "summary.json").read_text())
    assert {key: v["word"] for key, v in verdicts.items()} == {key: c["word"] for key, c in summary["claims"].items()}
    # NOTE: the README's one-screen forms of these (make metrics, exps, dag): tests/test_show.py
    table = run([sys.executable, "-m", "maskprune.show", "experiments"], smoke_repo, PYTHONPATH="src").stdout
    assert all(f"{key}.word" in table and v["word"] in table for key, v in verdicts.items()), table
    declared = [next(iter(plot)) for plot in yaml.safe_load((smoke_repo / "dvc.yaml").read_text())["plots"]]
    for command in (["show"], ["diff", "HEAD"]):
        shown = json.loads(run(["dvc", "plots", *command, "--json"], smoke_repo).stdout)
        assert "errors" not in shown, shown["errors"]
        assert sorted(shown["data"]) == sorted(declared)
    page = REPO / ".dvc" / "plots" / "offline.html"
    assert page.is_file(), "scripts/setup.sh builds the offline plots page: run it"
    out = tmp_path / "dvc_plots"
    run(["dvc", "plots", "show", "--html-template", str(page), "-o", str(out)], smoke_repo)
    html = (out / "index.html").read_text()
    assert network_links(html) == []
    assert all(f"vegaEmbed('#{name.replace(' ', '_')}'" in html for name in declared)
    assert network_links('<script src="https://cdn.jsdelivr.net/npm/vega@5"></script><a href="#x">') == [
        "https://cdn.jsdelivr.net/npm/vega@5"
    ]
    browser = require("chromium-headless-shell", "apt-get install chromium-headless-shell (bash scripts/setup.sh test)")
    dom = subprocess.run(  # NOTE: offline, so every chart drawn proves the inlined scripts work
        [
            browser,
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=20000",
            "--dump-dom",
            (out / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    # NOTE: vega-embed marks its element before it parses the spec; a canvas is there only once a chart is drawn
    assert dom.count("<canvas") == len(declared), dom[-2000:]


def test_shrinking_the_prune_matrix_removes_its_outputs_and_nothing_reads_them(smoke_run: Path, tmp_path: Path) -> None:
    repo = copy_run(smoke_run, tmp_path / "run")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["prune"]["keep_rates"] == [1.0, 0.5]
    params["prune"]["keep_rates"] = [0.5]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    gone = [name for name in PRUNED if name.endswith("-1.0")]
    kept = [name for name in PRUNED if name.endswith("-0.5")]
    assert gone and kept
    for name in gone:  # NOTE: copy_run leaves out checkpoints; one stands in for a stage's training state
        (repo / "checkpoints" / "prune" / name).mkdir(parents=True)
        (repo / "checkpoints" / "prune" / name / "state.json").write_text("{}")
    (repo / "models" / "prune" / "mine").mkdir()  # not a stage's output (no meta.json): left alone
    out = run(["dvc", "repro"], repo).stdout
    for name in gone:
        assert f"evaluate: removing models/prune/{name}: params.yaml no longer declares its stage" in out
        assert not (repo / "models" / "prune" / name).exists()
        assert not (repo / "checkpoints" / "prune" / name).exists()
    assert (repo / "models" / "prune" / "mine").is_dir()
    assert all((repo / "models" / "prune" / name / "meta.json").is_file() for name in kept)
    models = json.loads((repo / "metrics" / "evaluate.json").read_text())["models"]
    assert not [m for m in models if m.endswith("-1.0")] and all(f"prune/{name}" in models for name in kept)
    headline = json.loads((repo / "metrics" / "headline.json").read_text())
    assert sorted(headline) == sorted(models)
    for table in ("occlusion.csv", "cost.csv", "training.csv"):
        listed = set(pd.read_csv(repo / "plots" / "evaluate" / table)["model"])
        assert not [m for m in listed if str(m).endswith("-1.0")], table
    report = (repo / "reports" / "report.md").read_text()
    assert not [name for name in gone if name in report]
    assert "up to date" in run(["dvc", "status"], repo).stdout


def test_mlflow_has_one_parent_with_a_nested_run_per_stage(smoke_repo: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("maskprune")
    parents = client.search_runs([experiment.experiment_id], "tags.`maskprune.kind` = 'pipeline'")
    assert len(parents) == 1 and parents[0].data.tags["maskprune.source"] == "dvc repro"
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    by_stage = {run.data.tags["maskprune.stage"]: run for run in children}
    assert sorted(by_stage) == sorted(STAGES)
    teacher = by_stage["teacher"]
    assert teacher.data.tags["git.dirty"] in ("true", "false") and len(teacher.data.tags["git.commit"]) == 40
    assert logged_hashes(teacher)["data/prepared"].endswith(".dir")
    assert teacher.data.params["teacher.epochs"] == "2"
    assert len(client.get_metric_history(teacher.info.run_id, "val_top1")) == 2
    assert "evaluate" in by_stage and "teacher.top1" in by_stage["evaluate"].data.metrics
    masked_kd = by_stage["finetune@masked_kd"]
    assert masked_kd.data.params["finetune.masked_kd.teacher_keep"] == "0.75"
    assert {"val_top1", "teacher_gmacs_per_image", "teacher_throughput_ratio", "train_tflops"} <= set(
        masked_kd.data.metrics
    )
    assert logged_hashes(masked_kd)["data/prepared"].endswith(".dir")
    pruned = by_stage["prune@evit-masked-0.5"]
    assert pruned.data.tags["method"] == "evit" and pruned.data.tags["init"] == "masked"
    assert logged_hashes(pruned)["models/teacher/model.safetensors"]
    weights = smoke_repo / "models" / "prune" / "evit-masked-0.5" / "model.safetensors"
    assert pruned.data.tags["maskprune.weights_md5"] == hashlib.md5(weights.read_bytes()).hexdigest()
    assert "pruning.evit.keep0.5.masked_minus_full" in by_stage["evaluate"].data.metrics
    assert "task_agnostic.evit.cls_tokens.probe_top1" in by_stage["evaluate"].data.metrics
    assert "mto.mae.mto_final_top1" in by_stage["evaluate"].data.metrics
    pretrained = by_stage["pretrain@mae-mto"]
    assert pretrained.data.tags["objective"] == "mae" and pretrained.data.tags["loss"] == "mto"
    spa_weight = profile_params("smoke", smoke_repo).pretrain.mto.spa_weight
    assert pretrained.data.params["pretrain.mto.spa_weight"] == str(spa_weight)
    assert len(client.get_metric_history(pretrained.info.run_id, "probe_top1")) == 2
    assert len(client.get_metric_history(pretrained.info.run_id, "h_2")) == 2


def lock_hashes(repo: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
    return {dep["path"]: dep["md5"] for dep in lock["deps"] if "md5" in dep}


def logged_hashes(stage_run: Run) -> dict[str, str]:
    """The run's provenance.json dependency hashes, after checking the run's one digest tag of them."""
    hashes = mlflow.artifacts.load_dict(f"{stage_run.info.artifact_uri}/provenance.json")["dvc_deps"]
    digest = hashlib.md5(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    assert stage_run.data.tags["dvc.deps.md5"] == digest
    return hashes


def test_every_stage_run_records_the_hashes_dvc_locked_for_it(smoke_repo: Path, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("maskprune").experiment_id
    for stage_run in client.search_runs([experiment], "tags.`maskprune.kind` = 'stage'"):
        stage = stage_run.data.tags["maskprune.stage"]
        assert not [k for k in stage_run.data.tags if k.startswith("dvc.dep.")], stage  # one tag, not one per dep
        assert logged_hashes(stage_run) == lock_hashes(smoke_repo, stage), stage
    # a changed dependency: the rerun stage's hashes follow the lock DVC writes after it
    repo = copy_run(smoke_repo, tmp_path / "repo")
    with (repo / "stages" / "report.py").open("a") as handle:
        handle.write("# changed\n")
    run(["dvc", "repro", "report"], repo)
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    (report,) = client.search_runs(
        [client.get_experiment_by_name("maskprune").experiment_id], "tags.`maskprune.stage` = 'report'"
    )
    hashes = logged_hashes(report)
    assert hashes == lock_hashes(repo, "report")
    assert hashes["stages/report.py"] != lock_hashes(smoke_repo, "report")["stages/report.py"]


def test_bad_params_stop_repro_with_one_line_and_keep_outputs(smoke_repo: Path, tmp_path: Path) -> None:
    params_path = smoke_repo / "params.yaml"
    original = params_path.read_text()
    outputs = [smoke_repo / "metrics" / "evaluate.json", smoke_repo / "plots" / "evaluate" / "cost.csv"]
    before = [path.read_text() for path in outputs]
    try:
        params_path.write_text(original.replace("throughput_repeats: 3", "throughput_repeats: 0"))
        done = subprocess.run(["dvc", "repro"], cwd=smoke_repo, env=subprocess_env(), capture_output=True, text=True)
        assert done.returncode != 0
        assert (
            "maskprune: error: params.yaml: evaluate.throughput_repeats: Input should be greater than "
            "or equal to 1 (got 0)"
        ) in done.stderr
        assert "Traceback" not in done.stderr + done.stdout
        assert [path.read_text() for path in outputs] == before
    finally:
        params_path.write_text(original)


def test_params_diff_and_experiment_rerun_only_what_changed(smoke_repo: Path) -> None:
    # NOTE: the report's decision rules are the report's alone, so only the report reruns
    out = run(["dvc", "exp", "run", "-S", "report.rules.maskedkd.margin=0.02", "-n", "wider-margin"], smoke_repo).stdout
    for stage in ("teacher", "pretrain@mae-mto", "finetune@masked", "prune@evit-masked-0.5", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert "Running stage 'report'" in out
    diff = run(["dvc", "params", "diff"], smoke_repo).stdout
    assert "report.rules.maskedkd.margin" in diff and "0.005" in diff and "0.02" in diff
    shown = run(["dvc", "exp", "show", "--csv"], smoke_repo).stdout
    assert "wider-margin" in shown and "teacher.top1" in shown


def test_stage_log_only_relogs_existing_outputs(smoke_repo: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{smoke_repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("maskprune")

    def teacher_runs() -> int:
        return len(client.search_runs([experiment.experiment_id], "tags.`maskprune.stage` = 'teacher'"))

    before = teacher_runs()
    run([sys.executable, "-m", "stages.teacher", "--log-only"], smoke_repo, PYTHONPATH="src")
    assert teacher_runs() == before + 1
