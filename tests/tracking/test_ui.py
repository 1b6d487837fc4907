"""`make ui` in headless Chromium: the address it prints opens the runs table, not MLflow's GenAI overview.

The overview's content changes between MLflow releases (3.17 shows trace charts such as "Token
Usage", 3.18 a "send your first trace" guide when there are none), so the pages are told apart by
their titles ("Runs - Experiment 1", "Overview - Experiment 1") and by the runs table's header.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

from maskprune.tracking.ui import runs_table_url
from tests.conftest import subprocess_env
from tests.services import free_port, http_ok, require, service

pytestmark = pytest.mark.integration


def page_text(chromium: str, url: str, screenshot: Path) -> str:
    """The visible text of `url` once its scripts have run (and a screenshot of it)."""
    browse = [chromium, "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000", "--window-size=1600,1000"]
    subprocess.run([*browse, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
    dom = subprocess.run([*browse, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True).stdout
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def test_the_printed_address_opens_the_runs_table(smoke_repo: Path, tmp_path: Path) -> None:
    chromium = require(
        "chromium-headless-shell", "apt-get install chromium-headless-shell (bash scripts/setup.sh test)"
    )
    port = free_port()
    log = tmp_path / "ui.log"
    command = [sys.executable, "-m", "maskprune.tracking.ui", "--port", str(port)]
    env = subprocess_env(PYTHONPATH="src")
    with service("make ui", command, http_ok(f"http://127.0.0.1:{port}/health"), log, env=env, cwd=smoke_repo):
        printed = log.read_text().splitlines()[0]
        url = printed.removeprefix("MLflow UI: ")
        assert url == runs_table_url(f"http://127.0.0.1:{port}", "1")
        runs = page_text(chromium, url, tmp_path / "runs.png")
        overview = page_text(chromium, f"http://127.0.0.1:{port}/#/experiments/1", tmp_path / "overview.png")
    assert "Runs - Experiment 1" in runs, runs[:2000]
    assert "Run Name" in runs and "Duration" in runs and "pipeline" in runs, runs[:2000]
    # The control: the plain address lands on the overview, without the runs table.
    assert "Overview - Experiment 1" in overview and "Run Name" not in overview, overview[:2000]
    assert (tmp_path / "runs.png").stat().st_size > 10_000
