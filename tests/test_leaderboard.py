"""``--leaderboard`` on hand-made RobustBench model_info entries; ``report --format robustbench|jsonl`` read back."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import robustlab.models.robustbench as rb
from robustlab.cli import cli
from robustlab.errors import DataError
from robustlab.leaderboard import check_leaderboard, read_claim
from robustlab.reports.report import Report, Row

CONFIG = {"data": "cifar10", "n": 1000, "subset": "first", "models": [{"name": "robustbench:Carmon2019Unlabeled"}]}


def _row(attack: str = "autoattack", clean: float = 0.89, robust: float = 0.6, n: int = 1000, **kw: Any) -> Row:
    fields: dict[str, Any] = {
        "model": "robustbench:Carmon2019Unlabeled",
        "defense": "none",
        "threat_mode": "transfer",
        "attack": attack,
        "threat": "linf 8/255",
        "n": n,
        "clean_acc": clean,
        "robust_acc": robust,
        "attack_success_rate": None,
        "mean_norm": None,
        "max_norm": None,
        "seconds": 1.0,
    }
    return Row(**{**fields, **kw})


def _entry(root: Path, **fields: Any) -> Path:
    """RobustBench's layout: model_info/DATASET/THREAT/NAME.json, numbers as percent strings."""
    data = {"name": "Carmon2019Unlabeled", "dataset": "cifar10", "eps": "8/255", "clean_acc": "89.69"}
    path = root / "model_info" / "cifar10" / "Linf" / "Carmon2019Unlabeled.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**data, "autoattack_acc": "59.53", "unreliable": False, **fields}))
    return path


def _check(root: Path, rows: list[Row], **config: Any) -> list[dict[str, Any]]:
    report = Report(config={**CONFIG, **config}, environment={}, rows=rows)
    return check_leaderboard(report, root).leaderboard


def test_claims_are_percent_strings_and_external_takes_precedence(tmp_path: Path) -> None:
    claim = read_claim(_entry(tmp_path, external="57.30"), threat="Linf")
    assert (claim.clean, claim.robust, claim.robust_key, claim.eps) == (89.69, 57.30, "external", 8 / 255)
    clean, robust = _check(tmp_path, [_row(clean=0.9, robust=0.573)])
    assert (clean["metric"], clean["claimed"], clean["status"]) == ("clean_acc", 89.69, "ok")
    assert robust["claimed"] == 57.30 and robust["delta"] == pytest.approx(0.0, abs=1e-9)
    assert "external" in robust["reason"]
    _entry(tmp_path, clean_acc="ninety")
    with pytest.raises(DataError, match="clean_acc 'ninety' is not a percentage"):
        _check(tmp_path, [_row()])


def test_the_z_score_uses_the_finite_population_error_and_flags_beyond_two(tmp_path: Path) -> None:
    _entry(tmp_path)
    (clean, robust) = _check(tmp_path, [_row(clean=0.8969, robust=0.5953 - 0.04)])
    error = math.sqrt(0.5953 * (1 - 0.5953) / 1000 * (10_000 - 1000) / (10_000 - 1))
    assert robust["z"] == pytest.approx(-0.04 / error) and robust["status"] == "mismatch"  # z about -2.7
    assert clean["status"] == "ok" and clean["z"] == pytest.approx(0.0, abs=1e-9)
    report = check_leaderboard(Report(config=CONFIG, environment={}, rows=[_row(robust=0.5553)]), tmp_path)
    (flag,) = report.diagnostics
    assert flag.code == "leaderboard" and "Δ -4.00 pt" in flag.message
    # the whole test set: no sampling error left, 0.5 point is the limit
    full = _check(tmp_path, [_row(clean=0.8969 + 0.004, robust=0.5953 - 0.006, n=10_000)], n=None)
    assert [c["z"] for c in full] == [None, None] and [c["status"] for c in full] == ["ok", "mismatch"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"threat": "linf 4/255"}, "eps 4/255, the entry's 8/255"),
        ({"threat": "l2 0.5"}, "threat l2, the entry's Linf"),
        ({"attack": "autoattack-rand"}, "AutoAttack autoattack-rand"),
        ({"attack": "autoattack(steps=10)"}, "the standard version"),
    ],
)
def test_what_is_not_the_leaderboards_protocol_is_skipped_with_a_reason(
    tmp_path: Path, change: dict[str, Any], reason: str
) -> None:
    _entry(tmp_path)
    clean, robust = _check(tmp_path, [_row(**change)])
    assert clean["status"] == "ok" and robust["status"] == "skipped" and reason in robust["reason"]


def test_other_data_a_stratified_subset_and_unreliable_entries(tmp_path: Path) -> None:
    _entry(tmp_path)
    assert "data is synth" in _check(tmp_path, [_row()], data="synth")[0]["reason"]
    assert "--subset first" in _check(tmp_path, [_row()], subset="stratified")[1]["reason"]
    _entry(tmp_path, unreliable=True)
    robust = _check(tmp_path, [_row(robust=0.3)])[1]
    assert robust["status"] == "ok" and "unreliable" in robust["reason"]


class _Constant(nn.Module):
    """Predicts class 3 everywhere: on synth some samples are right, none can be attacked into being right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.full((len(x),), 3), 10).float() + 0 * x.mean()


@pytest.mark.slow
def test_an_exported_entry_reads_back_with_zero_delta_and_a_wrong_claim_is_flagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rb, "_zoo", lambda: {"cifar10": {"Linf": {"Const": {"model": _Constant}}}})
    (tmp_path / "models" / "cifar10" / "Linf").mkdir(parents=True)
    torch.save({}, tmp_path / "models" / "cifar10" / "Linf" / "Const.pt")
    monkeypatch.chdir(tmp_path)
    args = ["eval", "-q", "-n", "40", "--subset", "first", "--attack", "autoattack", "--model", "robustbench:Const"]
    first = CliRunner().invoke(cli, [*args, "--out", "run.json"])
    assert first.exit_code == 0, first.output
    exported = CliRunner().invoke(cli, ["report", "run.json", "--format", "robustbench", "-o", "Const.json"])
    assert exported.exit_code == 0, exported.output
    entry = json.loads(Path("Const.json").read_text())
    assert (entry["name"], entry["dataset"], entry["threat_model"], entry["eps"]) == ("Const", "synth", "Linf", "8/255")
    again = CliRunner().invoke(cli, [*args, "--leaderboard", "Const.json", "--out", "again.json"])
    assert again.exit_code == 0, again.output
    compared = json.loads(Path("again.json").read_text())["leaderboard"]
    assert [(c["metric"], c["delta"], c["status"]) for c in compared] == [
        ("clean_acc", 0.0, "ok"),
        ("robust_acc", 0.0, "ok"),
    ]
    assert "= leaderboard robustbench:Const clean_acc (clean): claimed" in again.output
    Path("Const.json").write_text(json.dumps({**entry, "clean_acc": "90.00"}))
    flagged = CliRunner().invoke(cli, [*args, "--leaderboard", "Const.json"])
    assert "! leaderboard: robustbench:Const clean_acc (clean): claimed 90.00%" in flagged.output
    lines = CliRunner().invoke(cli, ["report", "run.json", "--format", "jsonl"]).output.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 40 and set(records[0]) >= {"index", "label", "clean_pred", "worst_case"}
    assert all(record["clean_pred"] == 3 and not record["worst_case"] for record in records)


def test_a_listed_subset_is_the_leaderboards_protocol(tmp_path: Path) -> None:
    _entry(tmp_path)
    clean, robust = _check(tmp_path, [_row()], subset="list:imagenet_test_image_ids.txt")
    assert "reason" not in clean or "--subset first" not in clean["reason"]
    assert clean["status"] == "ok" and robust["status"] == "ok"
