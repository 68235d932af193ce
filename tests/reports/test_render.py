"""Reports people look at: Markdown, CSV, curves, and one HTML page that headless Chromium renders."""

from __future__ import annotations

import base64
import csv
import errno
import io
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from robustlab.cli import cli
from robustlab.reports.plots import curve_points
from robustlab.reports.report import SCHEMA_VERSION, Row
from robustlab.reports.tables import csv_table, markdown_table

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
)


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.chdir(tmp_path)
    return lambda *args: CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, trained_model: torch.nn.Module) -> Path:
    """A real two-budget FGSM run on 32 samples (a few seconds), shared by this module's tests."""
    out = tmp_path_factory.mktemp("sweep") / "run.json"
    args = ["eval", "--attack", "fgsm", "--eps", "2/255", "--eps", "8/255", "--n", "32", "-q", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out


def _row(attack: str, eps: float | None, robust: float) -> Row:
    config = {} if eps is None else {"eps": eps}
    return Row("m", "none", "-", attack, "linf x", 10, 0.9, robust, 0.5, None, None, 1.0, config)


def test_markdown_and_csv_keep_every_row() -> None:
    rows = [_row("pgd", 2 / 255, 0.8), _row("a|b", 8 / 255, 0.25)]
    markdown = markdown_table(rows).splitlines()
    assert len(markdown) == 4 and markdown[1].startswith("|---|")
    assert "a\\|b" in markdown[3] and "25.0% ±23.8" in markdown[3] and "| - |" in markdown[3]
    parsed = list(csv.DictReader(io.StringIO(csv_table(rows))))
    assert [float(r["robust_acc"]) for r in parsed] == [0.8, 0.25]
    assert parsed[1]["attack"] == "a|b" and parsed[1]["mean_norm"] == "" and '"eps"' in parsed[0]["attack_config"]


def test_curves_start_at_clean_accuracy_and_skip_rows_without_budget() -> None:
    rows = [_row("pgd", 8 / 255, 0.1), _row("pgd", 2 / 255, 0.7), _row("worst-case", None, 0.1), _row("cw", None, 0.0)]
    assert curve_points(rows) == {("m", "none", "-"): {"pgd (linf)": [(0.0, 0.9), (2 / 255, 0.7), (8 / 255, 0.1)]}}


def test_report_formats_from_a_run(run: Callable[..., Result], sweep: Path) -> None:
    markdown = run("report", str(sweep), "--format", "md")
    table = [line for line in markdown.stdout.splitlines() if line.startswith("|")]
    assert markdown.exit_code == 0 and len(table) == 5  # header, rule, 2 budgets, worst case
    assert "- synth: the first" in markdown.stdout  # how the data was sampled and the model fed
    assert run("report", str(sweep), "-o", "rows.csv").exit_code == 0
    assert len(list(csv.DictReader(io.StringIO(Path("rows.csv").read_text())))) == 3
    assert run("report", str(sweep), "-o", "curves.png").exit_code == 0
    assert Image.open("curves.png").size[0] > 300


def _assert_one_line(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("robustlab: error: ") and all(f in line for f in fragments), line


def test_unwritable_output_is_one_line_and_leaves_nothing(
    run: Callable[..., Result], sweep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    Path("out").mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", full_disk)
        _assert_one_line(run("report", str(sweep), "-o", "out/rows.md"), "out/rows.md", "No space left")
    assert list(Path("out").iterdir()) == []
    assert run("report", str(sweep), "-o", "missing/rows.md").exit_code == 0  # the folder is made
    assert Path("missing/rows.md").is_file()
    Path("locked").mkdir(mode=0o500)
    if os.access("locked", os.W_OK):  # root ignores permissions; the full-disk case above still covers it
        return
    _assert_one_line(run("report", str(sweep), "-o", "locked/rows.md"), "Permission denied")
    assert list(Path("locked").iterdir()) == []


def test_report_of_another_schema_is_one_line(run: Callable[..., Result], sweep: Path) -> None:
    Path("old.json").write_text(
        sweep.read_text().replace(f'"schema_version": {SCHEMA_VERSION}', '"schema_version": 99')
    )
    _assert_one_line(run("report", "old.json", "--format", "md"), "schema version 99")


def test_html_is_self_contained_with_table_curves_and_examples(run: Callable[..., Result], sweep: Path) -> None:
    result = run("report", str(sweep), "-o", "report.html", "--examples", "2")
    assert result.exit_code == 0, result.output
    page = Path("report.html").read_text()
    assert page.count('<tr class="row">') == 2 and page.count('<tr class="worst">') == 1
    assert not re.search(r"(src|href)=\"(?!data:)", page), "the page must not load anything from outside"
    images = dict(re.findall(r'<img id="(\w+)"[^>]*src="data:image/png;base64,([^"]+)"', page))
    assert set(images) == {"curves", "examples"}
    for data in images.values():
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[1] > 100


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(run: Callable[..., Result], sweep: Path, tmp_path: Path) -> None:
    assert run("report", str(sweep), "-o", "report.html", "--examples", "2").exit_code == 0
    url = (tmp_path / "report.html").as_uri()

    def chromium(*args: str) -> subprocess.CompletedProcess[str]:
        profile = f"--user-data-dir={tmp_path / 'profile'}"
        command = [str(CHROMIUM), *CHROMIUM_FLAGS, profile, *args, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    dom = chromium("--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    assert dom.stdout.count("<tr class=") == 3 and 'id="curves"' in dom.stdout and 'id="examples"' in dom.stdout
    shot = chromium("--screenshot=" + str(tmp_path / "shot.png"), "--window-size=1200,1800")
    assert shot.returncode == 0, shot.stderr[-2000:]
    image = Image.open(tmp_path / "shot.png").convert("RGB")
    assert image.size == (1200, 1800)
    colours = image.resize((300, 450)).getcolors(maxcolors=300 * 450) or []
    assert len(colours) > 200, "a blank or broken page has few colours"


def test_html_says_what_a_defense_does_to_clean_images() -> None:
    from robustlab.reports.html import render_html
    from robustlab.reports.report import Fidelity, Report

    fidelity = Fidelity("smallcnn", "raw_isp", 256, 29.11, 20.64)
    report = Report(config={}, environment={}, rows=[_row("pgd", 8 / 255, 0.2)], fidelity=[fidelity])
    page = render_html(report, curves_png=b"", grid_png=None, grid_note="")
    assert "raw_isp returns smallcnn&#x27;s clean inputs at 29.1 dB PSNR (worst 20.6 dB, 256 images)" in page
    assert 'id="fidelity"' not in render_html(replace(report, fidelity=[]), curves_png=b"", grid_png=None, grid_note="")


def test_markdown_carries_diagnostics_and_fidelity(run: Callable[..., Result], tmp_path: Path) -> None:
    from robustlab.reports.report import Diagnostic, Fidelity, Report

    report = Report(
        config={},
        environment={},
        rows=[_row("pgd", 8 / 255, 0.2)],
        diagnostics=[Diagnostic("oblivious_only", "pgd at linf 8/255: 70% transfer, 20% adaptive")],
        fidelity=[Fidelity("m", "raw_isp", 256, 29.11, 20.64)],
    )
    report.to_json(tmp_path / "flagged.json")
    markdown = run("report", str(tmp_path / "flagged.json"), "--format", "md")
    assert markdown.exit_code == 0, markdown.output
    table, notes = markdown.stdout.rstrip("\n").split("\n\n")
    assert len(table.splitlines()) == 3
    assert notes.splitlines() == [
        "- **oblivious_only**: pgd at linf 8/255: 70% transfer, 20% adaptive",
        "- raw_isp returns m's clean inputs at 29.1 dB PSNR (worst 20.6 dB, 256 images)",
    ]
