"""The report's Markdown and HTML renderings of a hand-made report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from maskprune.report import figures
from maskprune.report.model import Report, Section
from maskprune.report.render import render_html, render_markdown
from tests.report.structure import parse


def test_html_is_self_contained_well_formed_and_names_every_section(tmp_path: Path) -> None:
    figure = figures.curves(tmp_path / "f.png", {"x": ([1, 2], [0.1, 0.2], [0.0, 0.1], [0.2, 0.3])}, "e", "a", "t")
    sections = [Section(k, f"title {k} <&>", verdict=f"verdict {k}") for k in "AB"]
    sections[0].table(pd.DataFrame({"a": [1, 2], "b": ["x", "<y>"]}))
    sections[0].figure(figure, "a figure")
    seeds = pd.DataFrame({"seed": [0], "teacher weights": ["<0123abcd>"]})
    report = Report("t", ["intro"], sections, [0], [], "prune/x", None, {}, 0.95, {"teacher": "0123abcd"}, seeds)
    page = render_html(report)
    structure = parse(page)
    assert not structure.errors and not structure.stack, structure.errors
    assert structure.images and all(src.startswith("data:image/png;base64,") for src in structure.images)
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert structure.headings[1:] == ["A. title A <&>", "B. title B <&>"]
    markdown = render_markdown(report)
    assert "&lt;0123abcd&gt;" in page and "| <0123abcd> " in markdown
    assert "![a figure](figures/f.png)" in markdown and "**Verdict:** verdict A" in markdown
