"""``robustlab run NAME.toml``: the same grid as ``robustlab eval`` with the same options, and strict keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner, Result

from robustlab.cli import cli, eval_command
from robustlab.cli.configs import EvalOptions
from robustlab.experiment import experiment_options, find_experiment

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.chdir(tmp_path)
    return lambda *args: CliRunner().invoke(cli, list(args))


def _rows(path: str) -> list[dict[str, object]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads(Path(path).read_text())["rows"]]


def test_run_equals_eval_with_the_same_options(run: Callable[..., Result], trained_model: torch.nn.Module) -> None:
    Path("sweep.toml").write_text(
        'attacks = ["fgsm"]\neps = ["2/255", 0.03137254901960784]\nn = 32\nquiet = true\nout = "toml.json"\n'
    )
    assert run("run", "sweep.toml").exit_code == 0
    cli_args = ("--attack", "fgsm", "--eps", "2/255", "--eps", "8/255", "--n", "32", "-q", "--out", "cli.json")
    assert run("eval", *cli_args).exit_code == 0
    assert _rows("toml.json") == _rows("cli.json")
    assert [row["threat"] for row in _rows("toml.json")] == ["linf 2/255", "linf 8/255", "mixed"]
    Path("no_out.toml").write_text('attacks = ["fgsm"]\nn = 8\nquiet = true\n')
    assert run("run", "no_out.toml").exit_code == 0 and Path("no_out.json").is_file()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('modles = ["smallcnn"]', "unknown key(s) modles"),
        ('eps = ["9"]', "key eps"),
        ("n = [", "not valid TOML"),
    ],
)
def test_bad_experiment_is_one_line(run: Callable[..., Result], text: str, fragment: str) -> None:
    Path("bad.toml").write_text(text + "\n")
    result = run("run", "bad.toml")
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("robustlab: error: ") and fragment in line
    assert not list(Path().glob("*.json"))


def test_shipped_experiments_are_valid() -> None:
    files = sorted(EXPERIMENTS.glob("*.toml"))
    assert files
    with click.Context(eval_command) as ctx:
        for path in files:
            options = experiment_options(path, eval_command, ctx)
            assert options["models"] and options["out"] is not None
            EvalOptions(**options)  # every key is a field of the typed options the run is built from
    sweep = experiment_options(EXPERIMENTS / "synth_pgd_sweep.toml", eval_command, click.Context(eval_command))
    assert tuple(budget.eps for budget in sweep["eps"]) == (1 / 255, 2 / 255, 4 / 255, 8 / 255)
    assert sweep["attacks"] == ("pgd", "fgsm")


def test_an_experiment_is_found_from_any_folder(run: Callable[..., Result]) -> None:
    sweep = EXPERIMENTS / "synth_pgd_sweep.toml"
    assert find_experiment(Path("experiments/synth_pgd_sweep.toml")) == sweep  # relative to the project
    assert find_experiment(Path("synth_pgd_sweep")) == find_experiment(Path("synth_pgd_sweep.toml")) == sweep
    Path("synth_pgd_sweep.toml").write_text("n = 8\n")
    assert find_experiment(Path("synth_pgd_sweep.toml")) == Path("synth_pgd_sweep.toml")  # the working folder first
    missing = run("run", "no_such_sweep")
    assert missing.exit_code == 2 and "cannot read experiment no_such_sweep" in missing.stderr
