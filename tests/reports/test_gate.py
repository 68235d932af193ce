"""The regression gate: passes on an unchanged model, fails naming the row on a weaker one, refuses bad baselines."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file

from robustlab.cli import cli
from robustlab.errors import ConfigError
from robustlab.models.loading import ModelSpec, load_model
from robustlab.reports.gate import compare_reports
from robustlab.reports.report import Report, Row

EVAL = ("eval", "--model", "smallcnn", "--weights", "model.safetensors", "--attack", "fgsm", "--n", "64", "-q")


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.chdir(tmp_path)
    return lambda *args: CliRunner().invoke(cli, list(args))


def _row(**changes: object) -> Row:
    base = Row("m", "none", "-", "pgd", "linf 8/255", 100, 0.9, 0.5, 0.44, 0.03, 0.03, 1.0)
    return dataclasses.replace(base, **changes)


def _report(*rows: Row) -> Report:
    return Report(config={}, environment={}, rows=list(rows))


def _save(model: torch.nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(path))


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robustlab: error: "), result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def test_gate_passes_unchanged_and_fails_naming_the_row_for_a_weaker_model(
    run: Callable[..., Result], trained_model: torch.nn.Module
) -> None:
    _save(trained_model, Path("model.safetensors"))
    assert run(*EVAL, "--out", "baseline.json").exit_code == 0

    unchanged = run(*EVAL, "--out", "new.json", "--baseline", "baseline.json", "--tolerance", "0.02")
    assert unchanged.exit_code == 0, unchanged.output
    assert "gate passed" in unchanged.stdout
    assert run("compare", "new.json", "baseline.json").exit_code == 0

    _save(load_model("smallcnn", weights="random"), Path("model.safetensors"))  # same label, weaker weights
    weaker = run(*EVAL, "--out", "weak.json", "--baseline", "baseline.json")
    assert weaker.exit_code == 1, weaker.output
    regressed = [line for line in weaker.stdout.splitlines() if line.startswith("REGRESSED")]
    assert regressed and all("smallcnn[model.safetensors] / none / - / fgsm / linf 8/255" in line for line in regressed)
    assert any("clean_acc" in line for line in regressed)
    compared = run("compare", "weak.json", "baseline.json", "--tolerance", "0.02")
    assert compared.exit_code == 1 and weaker.stdout.endswith(compared.stdout)  # the verdict after the table


def test_baseline_of_another_schema_version_is_one_line(run: Callable[..., Result]) -> None:
    _report(_row()).to_json(Path("new.json"))
    data = json.loads(Path("new.json").read_text())
    Path("old.json").write_text(json.dumps({**data, "schema_version": 0}))
    assert_one_line_error(run("compare", "new.json", "old.json"), "old.json", "schema version 0")
    assert_one_line_error(run("eval", "--baseline", "old.json", "--n", "8"), "schema version 0")


def test_report_of_another_grid_is_one_line(run: Callable[..., Result]) -> None:
    _report(_row(attack="fgsm")).to_json(Path("new.json"))
    _report(_row(), _row(attack="fgsm")).to_json(Path("baseline.json"))
    result = run("compare", "new.json", "baseline.json")
    assert_one_line_error(
        result, "another grid", "m / none / - / pgd", "its attack pgd is not in this run (which has fgsm)"
    )


def test_a_default_given_explicitly_is_the_same_row() -> None:
    from robustlab.attacks import ATTACKS

    from robustlab.cli.options import build_specs

    plain = build_specs(ATTACKS, ["pgd"], [])
    assert build_specs(ATTACKS, ["pgd"], ["steps=10", "random_start=true"], shared={"steps": 10}) == plain
    assert [spec.label() for spec in plain] == ["pgd"]
    assert [spec.label() for spec in build_specs(ATTACKS, ["pgd"], [], shared={"steps": 20})] == ["pgd(steps=20)"]
    assert [spec.label() for spec in build_specs(ATTACKS, ["pgd", "fgsm", "pgd"], [])] == ["pgd", "fgsm"]
    assert ModelSpec("smallcnn", weights="synth").label() == ModelSpec("smallcnn").label() == "smallcnn"
    assert ModelSpec("smallcnn", weights="synth-at").label() == "smallcnn[synth-at]"
    assert ModelSpec("resnet50", weights="synth").label() == "resnet50[synth]"
    assert ModelSpec("resnet50", weights="imagenet").label() == "resnet50"


def _baseline_of(*rows: Row, n: int = 16) -> None:
    Report(config={"data": "synth", "n": n, "task": "classification"}, environment={}, rows=list(rows)).to_json(
        Path("baseline.json")
    )


PGD = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 10, "random_start": True}


@pytest.mark.parametrize(
    ("baseline", "args", "fragments"),
    [
        (
            _row(model="smallcnn", attack="pgd", attack_config=PGD),
            ["--steps", "20"],
            ["its attack pgd is not", "pgd(steps=20)"],
        ),
        (_row(model="smallcnn[synth-at]", attack_config=PGD), ["--weights", "synth"], ["its model smallcnn[synth-at]"]),
        (_row(model="smallcnn", threat="linf 4/255", attack_config=PGD), [], ["its threat linf 4/255"]),
        (
            _row(model="smallcnn", attack_config={**PGD, "steps": 7}),
            [],
            ["ran pgd with steps=7, this run with steps=10"],
        ),
    ],
)
def test_a_baseline_of_another_grid_is_refused_before_anything_runs(
    run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, baseline: Row, args: list[str], fragments: list[str]
) -> None:
    from robustlab.evaluate import Evaluator

    def must_not_run(*_: object) -> None:
        raise AssertionError("the grid is checked before the evaluation")

    monkeypatch.setattr(Evaluator, "run", must_not_run)
    _baseline_of(baseline)
    assert_one_line_error(run("eval", "--attack", "pgd", "--n", "16", "--baseline", "baseline.json", *args), *fragments)


def test_explicit_defaults_pass_the_gate_of_a_baseline_in_a_new_folder(
    run: Callable[..., Result], trained_model: torch.nn.Module
) -> None:
    made = run(
        "eval",
        "--weights",
        "synth",
        "--attack",
        "fgsm",
        "--attack",
        "pgd",
        "--n",
        "16",
        "-q",
        "--out",
        "baselines/b.json",
    )
    assert made.exit_code == 0, made.output  # the folder is made, the file written atomically
    checked = run(
        *("eval", "--attack", "fgsm", "--attack", "pgd", "--attack", "pgd", "--steps", "10", "--n", "16", "-q"),
        *("--out", "run.json", "--baseline", "baselines/b.json"),
    )
    assert checked.exit_code == 0, checked.output
    assert "gate passed: 3 row(s)" in checked.stdout  # fgsm, pgd (once) and their worst case
    assert [line.split()[3] for line in checked.stdout.splitlines()[2:5]] == ["fgsm", "pgd", "worst-case"]
    assert run("compare", "run.json", "baselines/b.json").exit_code == 0


def test_tolerance_is_absolute_and_the_margin_grows_as_n_shrinks() -> None:
    baseline = _report(_row(robust_acc=0.50))
    assert compare_reports(_report(_row(robust_acc=0.49)), baseline, tolerance=0.02) == []
    (regression,) = compare_reports(_report(_row(robust_acc=0.47)), baseline, tolerance=0.02)
    assert (regression.metric, regression.baseline, regression.new) == ("robust_acc", 0.50, 0.47)
    # two standard errors of a difference of proportions near 0.5 at n=100: 2*sqrt(2*0.25/100) ~ 0.14
    assert compare_reports(_report(_row(robust_acc=0.40)), baseline, tolerance=0.02, margin_sigmas=2) == []
    large = _report(_row(robust_acc=0.50, n=100_000))
    assert compare_reports(_report(_row(robust_acc=0.40, n=100_000)), large, tolerance=0.02, margin_sigmas=2)
    assert compare_reports(_report(_row(robust_acc=0.9, clean_acc=1.0)), baseline, tolerance=0.0) == []
    with pytest.raises(ConfigError, match="tolerance"):
        compare_reports(baseline, baseline, tolerance=-1)


def test_the_margin_is_in_the_reports_wilson_arithmetic_even_at_100_percent() -> None:
    from robustlab.intervals import wilson_interval

    baseline = _report(_row(clean_acc=1.0, n=50))
    (regression,) = compare_reports(_report(_row(clean_acc=0.9, n=50)), baseline, tolerance=0.01, margin_sigmas=1.5)
    intervals = (wilson_interval(1.0, 50), wilson_interval(0.9, 50))
    sigmas = [(high - low) / 2 / 1.959963984540054 for low, high in intervals]
    assert regression.allowed == pytest.approx(0.01 + 1.5 * (sigmas[0] ** 2 + sigmas[1] ** 2) ** 0.5)
    assert sigmas[0] > 0.01  # the binomial standard error at 100% is zero: no margin where noise is largest


def test_gate_under_torchrun_judges_once_on_rank_0(
    tmp_path: Path, trained_model: torch.nn.Module, robustlab_process: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    args = ["eval", "-n", "32", "--batch-size", "16", "--attack", "fgsm", "--device", "cpu", "--quiet"]
    assert robustlab_process(*args, "--out", str(tmp_path / "one.json")).returncode == 0
    sharded = robustlab_process(*args, "--baseline", str(tmp_path / "one.json"), ranks=2)
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    assert sharded.stdout.count("gate passed") == 1, sharded.stdout
