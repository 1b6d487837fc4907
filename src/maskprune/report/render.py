"""The report as Markdown (figures as files beside it) and as one self-contained HTML page."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from maskprune.layout import REPORT_FIGURES_DIR
from maskprune.report.model import Report

SEEDS_TEXT = (
    "Seeds and the teachers they share (test top-1 in points; weights: the first 12 digits of their sha256), "
    "and the precision they ran at (evaluate's inference and every training epoch's, where recorded; "
    "'mixed' names the stages of each). A seed taught by other weights, or run at another precision, is excluded."
)


def render_markdown(report: Report) -> str:
    """Markdown with the figures as files beside it, in figures/."""
    lines = [f"# {report.title}", "", *report.intro, "", SEEDS_TEXT, "", report.seed_table.to_markdown(index=False)]
    lines += ["", "## Verdicts", ""]
    lines += [f"- **{s.key}. {s.title}**: {s.verdict}" for s in report.sections]
    for sec in report.sections:
        lines += ["", f"## {sec.key}. {sec.title}", ""]
        for kind, value in sec.blocks:
            if kind == "text":
                lines += [value, ""]
            elif kind == "table":
                lines += [value.to_markdown(index=False), ""]
            else:
                path, caption = value
                lines += [f"![{caption}]({REPORT_FIGURES_DIR.name}/{path.name})", "", f"*{caption}*", ""]
        lines += [f"**Verdict:** {sec.verdict}"]
    return "\n".join(lines) + "\n"


# the page's only style sheet, inline
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}figcaption{font-size:.85em;
color:#555}.verdict{background:#eef6ee;border-left:4px solid #4a4;padding:.5em .8em}"""


def render_html(report: Report) -> str:
    """One self-contained page: figures embedded as data URIs, no external resource."""
    esc = html.escape
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(report.title)}</title>',
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{esc(report.title)}</h1>",
    ]
    parts += [f"<p>{esc(line)}</p>" for line in report.intro]
    parts += [f"<p>{esc(SEEDS_TEXT)}</p>", report.seed_table.to_html(index=False, border=0, escape=True)]
    parts.append('<h2 id="verdicts">Verdicts</h2><ul>')
    parts += [
        f'<li><a href="#{s.key}"><b>{esc(s.key)}. {esc(s.title)}</b></a>: {esc(s.verdict)}</li>'
        for s in report.sections
    ]
    parts.append("</ul>")
    for sec in report.sections:
        parts.append(f'<h2 id="{sec.key}">{esc(sec.key)}. {esc(sec.title)}</h2>')
        for kind, value in sec.blocks:
            if kind == "text":
                parts.append(f"<p>{esc(value)}</p>")
            elif kind == "table":
                parts.append(value.to_html(index=False, border=0, escape=True))
            else:
                path, caption = value
                data = base64.b64encode(Path(path).read_bytes()).decode()
                parts.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
                    f"<figcaption>{esc(caption)}</figcaption></figure>"
                )
        parts.append(f'<p class="verdict"><b>Verdict:</b> {esc(sec.verdict)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
