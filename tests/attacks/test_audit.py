"""``--attack audit``: the minimum automated evaluation per defense as one row, its verdict and its curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import robustlab.attacks  # noqa: F401  (registers the attacks)
from click.testing import CliRunner
from torch import nn

from robustlab.attack import ATTACKS
from robustlab.cli import cli
from robustlab.components import ComponentSpec
from robustlab.diagnostics.convergence import audit_verdicts
from robustlab.randomized import randomized_version
from robustlab.reports.plots import curve_points, step_points
from robustlab.reports.report import Report

TINY = ["steps=3", "restarts=2", "queries=40", "aa_steps=3", "eps_factors=1/2,4", "sweep_steps=1,3"]
"""Every budget of the audit overridden to a few steps, so that a test runs it in seconds."""


def _audit_args(*extra: str) -> list[str]:
    return [arg for item in TINY for arg in ("--attack-arg", f"audit.{item}")] + list(extra)


@pytest.fixture(scope="module")
def audited(trained_model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, str]:
    out = tmp_path_factory.mktemp("audit") / "run.json"
    args = ["eval", "-q", "--attack", "audit", *_audit_args("--eps", "2/255", "-n", "24", "--out", str(out))]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return Report.from_json(out), result.output


@pytest.mark.slow
def test_the_audit_is_one_row_with_its_interval_curves_and_verdict(audited: tuple[Report, str]) -> None:
    report, output = audited
    (row,) = report.rows
    assert row.attack.startswith("audit(") and row.kind == "perturbation" and row.robust_acc is not None
    metrics = row.metric_values()
    components = ["apgd-ce", "apgd-t", "fab-t", "square", "apgd-ce-3x2", "apgd-dlr-3x2"]
    assert [name for name in metrics if name.startswith("broken_by_")] == [f"broken_by_{c}" for c in components]
    broken = sum(metrics[f"broken_by_{c}"] for c in components)
    assert broken == round(row.n * (row.clean_acc - row.robust_acc)), "every broken sample is one component's"
    # No point of the ε sweep or of the step sweep is above clean (that the ε sweep reaches 0: the test below).
    assert all(metrics[f"robust_at_{p}"] <= row.clean_acc for p in ("eps*1/2", "eps*4", "steps=1", "steps=3"))
    (verdict,) = [line for line in output.splitlines() if line.startswith(("! audit:", "! not_converged:"))]
    assert f"{100 * row.robust_acc:.1f}% ±" in verdict and "AutoAttack alone" in verdict, verdict


@pytest.mark.slow
@pytest.mark.xfail(
    reason="measured at 4x the budget (8/255, n = 24): at most .1 on AVX2 CPUs' default models (earlier CI runs); "
    "2/24 = .083 at 1 thread and 3/24 = .125 at 2 threads on an AVX-512 CPU's (another draw of the default model; "
    "half the budget: 24/24 on both): the 2-thread AVX-512 model fails the .1 claim",
    raises=AssertionError,
    strict=False,
)
def test_the_eps_sweep_reaches_0_at_four_times_the_budget(audited: tuple[Report, str]) -> None:
    report, _ = audited
    (row,) = report.rows
    metrics = row.metric_values()
    assert metrics["robust_at_eps*4"] <= 0.1 < metrics["robust_at_eps*1/2"]


@pytest.mark.slow
def test_the_report_draws_the_audit_curves(audited: tuple[Report, str]) -> None:
    report, _ = audited
    (eps_panel,) = curve_points(report.rows).values()
    (sweep,) = [points for name, points in eps_panel.items() if "ε sweep" in name]
    assert [eps for eps, _ in sweep] == [0.0, 1 / 255, 8 / 255]
    ((steps_line,),) = [list(lines.values()) for lines in step_points(report.rows).values()]
    assert [steps for steps, _ in steps_line] == [1.0, 3.0]


def _samples(broken_by: list[int], adv_ok: list[bool], mode: str = "-") -> dict[str, Any]:
    n = len(broken_by)
    return {
        "threat_mode": mode,
        "task": "classification",
        "classifies": True,
        "label": [0] * n,
        "clean_pred": [0] * n,
        "attacks": [{"attack": "audit", "adv_pred": [0 if ok else 1 for ok in adv_ok], "broken_by": broken_by}],
    }


@pytest.mark.parametrize(
    ("extra_broken", "code"),
    [(0, "audit"), (1, "audit"), (30, "not_converged")],
    ids=["nothing-more", "inside-the-noise", "thirty-more"],
)
def test_the_verdict_is_not_converged_when_the_longer_runs_break_more(extra_broken: int, code: str) -> None:
    """100 samples, 40 broken by AutoAttack's components (0-3), ``extra_broken`` more by the 200 x 5 runs (4-5)."""
    broken_by = [0] * 40 + [4] * extra_broken + [-1] * (60 - extra_broken)
    robust = [b < 0 for b in broken_by]
    audit = ATTACKS.get("audit").factory()
    (found,) = audit_verdicts([_samples(broken_by, robust)], [("audit", audit)], ("m", "d"))
    assert found.code == code, found.message
    assert f"AutoAttack alone {60:.1f}%" in found.message


def test_the_verdict_takes_the_worst_case_over_threat_modes() -> None:
    """A sample the transfer audit broke and the adaptive one did not is broken: the number is over both modes."""
    adaptive = _samples([-1] * 10, [True] * 10, "adaptive")
    transfer = _samples([0] * 3 + [-1] * 7, [False] * 3 + [True] * 7, "transfer")
    audit = ATTACKS.get("audit").factory()
    (found,) = audit_verdicts([transfer, adaptive], [("audit", audit)], ("m", "d"))
    assert "in the transfer and adaptive modes: 70.0% ±" in found.message, found.message


def test_a_randomized_model_gets_the_rand_audit_with_the_same_budgets() -> None:
    spec = ComponentSpec("audit", (("steps", 7), ("queries", 9)))
    new, attack = randomized_version(spec, spec.build(ATTACKS))
    assert new.name == "audit-rand" and dict(new.params) == {"steps": 7, "queries": 9}
    assert [name for name, _ in attack.components()] == ["apgd-ce", "apgd-dlr", "apgd-ce-7x5", "apgd-dlr-7x5"]
    assert attack.averages_draws and all(a.config()["eot"] == 20 for _, a in attack.sweep_points())


@pytest.mark.parametrize("arg", ["audit.eps_factors=half", "audit.sweep_steps=0", "audit.restarts=0"])
def test_a_bad_audit_budget_is_one_line(arg: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["eval", "-q", "--attack", "audit", "--attack-arg", arg, "-n", "4"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("robustlab: error: attack audit: "), result.output
    assert "Traceback" not in result.output
