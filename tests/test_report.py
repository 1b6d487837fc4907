"""The report: its pieces on hand-made inputs, and the report stage on the smoke run with hand-made seeds."""

from __future__ import annotations

import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from maskprune import figures
from maskprune.config import validate_params
from maskprune.report import Report, Section, build_report, pareto_front, render_html, render_markdown
from maskprune.results import differing_keys

T_975_2 = 4.302652729911275  # Student t quantile, 2 degrees of freedom, 97.5% (tables)
SECTIONS = ("A", "B", "C", "D", "E", "T")


class Structure(HTMLParser):
    """Checks that every opened element is closed in order (void elements excepted) and collects images."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.headings: list[str] = []
        self.errors: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        if tag not in self.VOID:
            self.stack.append(tag)
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2 and data.strip():
            self.headings.append(data.strip())


def parse(page: str) -> Structure:
    parser = Structure()
    parser.feed(page)
    parser.close()
    return parser


def test_pareto_front_by_hand() -> None:
    pts = [
        {"name": "a", "x": 1.0, "y": 0.5},
        {"name": "b", "x": 2.0, "y": 0.8},
        {"name": "c", "x": 3.0, "y": 0.7},
        {"name": "d", "x": 2.0, "y": 0.6},
        {"name": "e", "x": 4.0, "y": 0.9},
    ]
    assert pareto_front(pts, "x", "y") == ["a", "b", "e"]  # c and d: b is cheaper-or-equal and better
    assert pareto_front(pts, "x", "y", lower_x_better=False) == ["e"]


def test_seeds_compare_only_on_keys_that_change_results() -> None:
    a = {"seed": 0, "tracking": {"uri": ""}, "prune": {"keep_rates": [0.5]}, "runtime": {"progress": "auto"}}
    b = {
        "seed": 1,
        "tracking": {"uri": "http://x"},
        "prune": {"keep_rates": [0.7]},
        "runtime": {"progress": "never"},
    }
    assert differing_keys(a, b) == ["prune.keep_rates"]
    assert differing_keys(a, {**a, "seed": 5}) == []


def test_html_is_self_contained_well_formed_and_names_every_section(tmp_path: Path) -> None:
    figure = figures.curves(tmp_path / "f.png", {"x": ([1, 2], [0.1, 0.2], [0.0, 0.1], [0.2, 0.3])}, "e", "a", "t")
    sections = [Section(k, f"title {k} <&>", verdict=f"verdict {k}") for k in "AB"]
    sections[0].table(pd.DataFrame({"a": [1, 2], "b": ["x", "<y>"]}))
    sections[0].figure(figure, "a figure")
    report = Report("t", ["intro"], sections, [0], [], "prune/x")
    page = render_html(report)
    structure = parse(page)
    assert not structure.errors and not structure.stack, structure.errors
    assert structure.images and all(src.startswith("data:image/png;base64,") for src in structure.images)
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert structure.headings[1:] == ["A. title A <&>", "B. title B <&>"]
    markdown = render_markdown(report)
    assert "![a figure](figures/f.png)" in markdown and "**Verdict:** verdict A" in markdown


def test_token_grid_draws_one_panel_per_image_and_column(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 255, (3, 28, 28), dtype=np.uint8)
    kept = np.zeros((3, 49), dtype=bool)
    kept[:, :10] = True
    path = figures.token_grid(tmp_path / "t.png", images, {"input": np.ones((3, 49), bool), "kept": kept}, 7, "x")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the report stage on the smoke run (integration) ---------------------------------------------------------


def result_root(smoke_repo: Path, dest: Path) -> Path:
    """The smoke run's results (what the report reads) in a folder of their own."""
    dest.mkdir(parents=True)
    for relative in ("params.yaml", "metrics", "plots", "data/prepared", "reports/sweeps"):
        source = smoke_repo / relative
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, dest / relative)
    for metrics in (smoke_repo / "models").rglob("metrics.json"):
        target = dest / metrics.relative_to(smoke_repo)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(metrics, target)
    return dest


def hand_made_seed(root: Path, folder: Path, seed: int, full: float, masked: float) -> None:
    """A copy of `root`'s results as seed `seed`, with every pruned model's top-1 set by hand."""
    shutil.copytree(root / "plots", folder / "plots")
    for metrics in (root / "models").rglob("metrics.json"):
        (folder / metrics.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(metrics, folder / metrics.relative_to(root))
    params = yaml.safe_load((root / "params.yaml").read_text())
    (folder / "params.yaml").write_text(yaml.safe_dump({**params, "seed": seed}, sort_keys=False))
    set_pruned_top1(root / "metrics" / "evaluate.json", folder / "metrics" / "evaluate.json", full, masked)


def set_pruned_top1(source: Path, target: Path, full: float, masked: float) -> None:
    report = json.loads(source.read_text())
    for name, entry in report["models"].items():
        if name.startswith("prune/"):
            entry["top1"] = masked if "-masked-" in name else full
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report))


@pytest.mark.integration
def test_report_stage_writes_a_self_contained_report_with_a_verdict_per_section(smoke_repo: Path) -> None:
    out = smoke_repo / "reports"
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["verdicts"]) == sorted(SECTIONS) and summary["seeds"] == [0]
    assert all(summary["verdicts"][k] for k in SECTIONS) and summary["best_pruned"].startswith("prune/")
    page = (out / "report.html").read_text()
    structure = parse(page)
    assert not structure.errors and not structure.stack, structure.errors
    assert all(src.startswith("data:image/png;base64,") for src in structure.images)
    markdown = (out / "report.md").read_text()
    referenced = [line.split("](")[1].rstrip(")") for line in markdown.splitlines() if line.startswith("![")]
    assert len(referenced) == len(structure.images) >= 10  # every figure of the markdown is embedded in the HTML
    assert all((out / path).is_file() for path in referenced)
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(Path(p).name for p in referenced)
    assert [h.split(".")[0] for h in structure.headings[1:]] == list(SECTIONS)
    assert "inconclusive at 95%" in markdown  # one seed: no interval, so no effect is decided
    assert "tokens-prune-evit-masked-0.5.png" in markdown and "tokens-maskedkd-teacher.png" in markdown


@pytest.mark.integration
def test_report_aggregates_seeds_with_paired_intervals_and_excludes_other_configs(
    smoke_repo: Path, tmp_path: Path
) -> None:
    root = result_root(smoke_repo, tmp_path / "results")
    fulls, gains = [0.70, 0.71, 0.72], [0.030, 0.032, 0.034]
    set_pruned_top1(
        root / "metrics" / "evaluate.json", root / "metrics" / "evaluate.json", fulls[0], fulls[0] + gains[0]
    )
    for seed in (1, 2):
        hand_made_seed(root, root / "reports" / "seeds" / f"seed-{seed}", seed, fulls[seed], fulls[seed] + gains[seed])
    other = root / "reports" / "seeds" / "seed-3"
    hand_made_seed(root, other, 3, 0.5, 0.5)
    changed = yaml.safe_load((other / "params.yaml").read_text())
    changed["prune"]["train"]["epochs"] = 7
    (other / "params.yaml").write_text(yaml.safe_dump(changed))

    params = validate_params(yaml.safe_load((root / "params.yaml").read_text()))
    report = build_report(root, params, tmp_path / "figures")
    assert report.seeds == [0, 1, 2]
    assert report.excluded[0]["seed"] == 3 and "prune.train.epochs" in report.excluded[0]["reason"]
    rows = next(frame for kind, frame in report.sections[0].blocks if kind == "table")
    row = rows[(rows["method"] == "evit") & (rows["keep rate"] == 0.5)].iloc[0]
    half = T_975_2 * 0.01 / math.sqrt(3)  # full top-1 0.70, 0.71, 0.72: mean 0.71, sd 0.01
    assert row["init full"] == f"71.00 [{(0.71 - half) * 100:.2f}, {(0.71 + half) * 100:.2f}] (n=3)"
    half = T_975_2 * 0.002 / math.sqrt(3)  # differences 0.030, 0.032, 0.034: mean 0.032, sd 0.002
    assert row["masked - full (points)"] == f"+3.20 [{(0.032 - half) * 100:+.2f}, {(0.032 + half) * 100:+.2f}] (n=3)"
    assert row["verdict"] == "effect reproduced"
    assert report.sections[0].verdict.startswith("Masked fine-tuning as the init changes pruned top-1 by +3.20")
    assert report.sections[0].verdict.endswith("effect reproduced.")


@pytest.mark.integration
def test_best_pruned_model_is_registered_with_an_alias_and_serves_predictions(
    smoke_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import torch

    from maskprune.checkpoint import load_model
    from maskprune.data.loader import Normalizer, load_prepared

    uri = f"sqlite:///{smoke_repo / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    summary = json.loads((smoke_repo / "reports" / "summary.json").read_text())
    version = client.get_model_version_by_alias("maskprune-pruned", "champion")
    run = client.get_run(version.run_id)
    assert run.data.tags["maskprune.stage"] == "report" and run.data.tags["best_pruned"] == summary["best_pruned"]
    assert run.data.tags["verdict.A"] == summary["verdicts"]["A"]
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert {"report.html", "report.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    served = mlflow.pyfunc.load_model("models:/maskprune-pruned@champion")
    test = load_prepared(smoke_repo / "data" / "prepared" / "fashion_mnist", splits=("test",)).splits["test"]
    images = test.images[:16]
    probabilities = served.predict(images.numpy())
    model, meta = load_model(smoke_repo / "models" / summary["best_pruned"])
    with torch.inference_mode():
        expected = model.eval()(
            Normalizer(meta["mean"], meta["std"], meta["model"]["img_size"], torch.device("cpu"))(images)
        ).softmax(-1)
    np.testing.assert_allclose(probabilities, expected.numpy(), atol=1e-5)
