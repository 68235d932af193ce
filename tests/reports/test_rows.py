"""A row says whether it scores a classifier on the dataset's labels; readers never infer it from a task's name."""

from __future__ import annotations

import json
from pathlib import Path

from robustlab.reports.report import Report, Row, format_table, row_key


def _row(task: str, *, classifies: bool) -> Row:
    return Row(
        "m", "none", "-", "pgd", "linf 8/255", 10, 0.9, 0.5, 0.44, 0.03, 0.03, 1.0, task=task, classifies=classifies
    )


def _block(task: str, *, classifies: bool) -> dict[str, object]:
    return {"model": "m", "defense": "none", "threat_mode": "-", "task": task, "classifies": classifies,
            "index": [0], "label": [0], "clean_pred": [0], "attacks": []}  # fmt: skip


def test_a_report_without_the_flag_reads_it_from_the_plain_classifiers_task_name(tmp_path: Path) -> None:
    rows = [_row("classification", classifies=True), _row("downstream/shape", classifies=False)]
    samples = [_block("classification", classifies=True), _block("downstream/shape", classifies=False)]
    Report(config={}, environment={}, rows=rows, samples=samples).to_json(tmp_path / "new.json")
    data = json.loads((tmp_path / "new.json").read_text())
    for entry in (*data["rows"], *data["samples"]):
        del entry["classifies"]  # as robustlab wrote reports before rows carried it
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = Report.from_json(tmp_path / "old.json")
    assert [row.classifies for row in old.rows] == [True, False]
    assert [block["classifies"] for block in old.samples] == [True, False]
    assert Report.from_json(tmp_path / "new.json") == old


def test_a_classifying_task_of_another_name_is_its_own_row_and_column() -> None:
    plain, plugin = _row("classification", classifies=True), _row("top1_of_halves", classifies=True)
    assert plain.key() != plugin.key()
    assert plain.key() == row_key("m", "none", "-", "pgd", "linf 8/255", "classification")
    assert "task" not in format_table([plain]).splitlines()[0].split()
    assert "top1_of_halves" in format_table([plain, plugin])
