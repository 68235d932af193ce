"""The regression gate: compare a report with a baseline and name every row that got worse.

CI runs the same evaluation on every change and fails the job when a gated metric of any row
(clean or robust accuracy, or a task's own metric) gets worse by more than a tolerance. Rows are
matched by :meth:`robustlab.reports.report.Row.key`, so the two reports must cover the same grid; a baseline
row missing from the new report is bad input, not a pass, because a gate that silently skips rows
would let a regression through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustlab.errors import ConfigError
from robustlab.intervals import wilson_sigma
from robustlab.reports.report import Report, Row

__all__ = [
    "Regression",
    "check_same_grid",
    "check_same_scope",
    "compare_reports",
    "format_regressions",
    "load_baseline",
]

SCOPE = ("data", "n", "task")
"""Config keys two reports must share to be compared: the same rows over other samples mean nothing."""


@dataclass(frozen=True)
class Regression:
    """One metric of one row that moved the wrong way by more than it is allowed to.

    ``allowed`` is the tolerance plus, for proportions, the statistical margin (``margin_sigmas``
    standard errors of the difference of two proportions measured on ``n`` samples each, each standard
    error the 95% Wilson half-width over 1.96: the arithmetic of the report's intervals).
    """

    key: tuple[str, ...]
    metric: str
    baseline: float
    new: float
    allowed: float
    higher_is_better: bool = True

    def describe(self) -> str:
        """One line naming the row and the change, e.g. for a CI log."""
        change = self.baseline - self.new if self.higher_is_better else self.new - self.baseline
        word = "drop" if self.higher_is_better else "rise"
        return (
            f"{' / '.join(self.key)}: {self.metric} {self.baseline:.4f} -> {self.new:.4f} "
            f"({word} {change:.4f} > allowed {self.allowed:.4f})"
        )


def load_baseline(path: Path) -> Report:
    """Read a baseline report (schema 1 is upgraded; another version is a :class:`ConfigError`)."""
    return Report.from_json(path)


def compare_reports(new: Report, baseline: Report, *, tolerance: float, margin_sigmas: float = 0.0) -> list[Regression]:
    """Return every gated metric of ``baseline`` that ``new`` worsens by more than allowed.

    Metrics are compared by name and direction: a higher-is-better metric regresses when it falls, a
    lower-is-better one (a caption attack's BLEU to its target, classes fooled) when it rises.

    Args:
        new: the report under test.
        baseline: the accepted scores.
        tolerance: allowed absolute worsening (0.02 = two points of accuracy).
        margin_sigmas: extra allowance in standard errors of the difference, for proportions only, so that a
            small ``n`` does not fail the gate on sampling noise alone (0 disables it).

    Raises:
        ConfigError: a negative tolerance or margin, other data, n or task than the baseline's, a baseline row
            or metric the new report lacks, or an attack resolved to other hyperparameters.
    """
    if tolerance < 0 or margin_sigmas < 0:
        raise ConfigError(f"tolerance and margin must be >= 0, got {tolerance} and {margin_sigmas}")
    check_same_scope(new.config, baseline.config)
    check_same_grid({row.key(): row.attack_config for row in new.rows}, baseline)
    rows = {row.key(): row for row in new.rows}
    found: list[Regression] = []
    for old in baseline.rows:
        current = rows[old.key()]
        values = current.metric_values()
        for name, metric in old.metrics.items():
            if not metric.get("gated", True):
                continue
            if name not in values:
                raise ConfigError(f"{' / '.join(old.key())}: the report has no metric {name!r} to compare")
            before, after, higher = float(metric["value"]), values[name], bool(metric["higher_is_better"])
            allowed = tolerance
            if metric.get("proportion", False):
                allowed += margin_sigmas * _difference_se(before, old.n, after, current.n)
            worse = before - after if higher else after - before
            if worse > allowed + 1e-12:  # accuracies are ratios of counts: ignore float noise
                found.append(Regression(old.key(), name, before, after, allowed, higher))
    return found


def check_same_grid(new: dict[tuple[str, ...], dict[str, Any] | None], baseline: Report) -> None:
    """Refuse a run without a row for each baseline row, or whose attack there resolves to other hyperparameters.

    ``new`` maps the run's row keys (made or planned, :func:`robustlab.grid.planned_rows`) to their
    attack's resolved config (``None``: not compared). The message names what differs, axis by axis.
    """
    missing = [row.key() for row in baseline.rows if row.key() not in new]
    if missing:
        shown = "; ".join(" / ".join(key) for key in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConfigError(
            f"the report covers another grid than the baseline: {len(missing)} baseline row(s) missing "
            f"({shown}{more}){_axis_differences(missing, list(new))}; rerun with the baseline's models, "
            f"weights, defenses, attacks and budgets, or make a new baseline"
        )
    for row in baseline.rows:
        resolved = new[row.key()]
        if resolved is None or not row.attack_config or resolved == row.attack_config:
            continue
        changed = sorted(k for k in {*resolved, *row.attack_config} if resolved.get(k) != row.attack_config.get(k))
        raise ConfigError(
            f"{' / '.join(row.key())}: the baseline ran {row.attack} with "
            f"{', '.join(f'{k}={row.attack_config.get(k)!r}' for k in changed)}, this run with "
            f"{', '.join(f'{k}={resolved.get(k)!r}' for k in changed)}: make a new baseline with this robustlab"
        )


_AXES = ("model", "defense", "threat mode", "attack", "threat", "task")


def _axis_differences(missing: list[tuple[str, ...]], present: list[tuple[str, ...]]) -> str:
    """``: its attack pgd(steps=20) is not in this run (which has pgd)``, for every axis that explains ``missing``."""
    said = []
    for i, axis in enumerate(_AXES):
        ours = list(dict.fromkeys(key[i] for key in present))
        theirs = dict.fromkeys(key[i] for key in missing)
        absent = [value for value in theirs if value not in ours]
        if absent:
            said.append(f"its {axis} {', '.join(absent)} is not in this run (which has {', '.join(ours) or 'none'})")
    return ": " + "; ".join(said) if said else ""


def check_same_scope(new: dict[str, object], baseline: dict[str, object]) -> None:
    """Refuse to gate a run on other data, sample count or task than its baseline (a pass there proves nothing)."""
    for key in SCOPE:
        if key in new and key in baseline and new[key] != baseline[key]:
            raise ConfigError(
                f"the report was measured with {key}={new[key]!r} but the baseline with {key}={baseline[key]!r}: "
                f"rerun with the baseline's --{key}, or make a new baseline"
            )


def _difference_se(p1: float, n1: int, p2: float, n2: int) -> float:
    """Standard error of ``p1 - p2`` for two independent proportions, each in Wilson's arithmetic (the report's
    intervals): unlike the binomial one it is not zero at 0% or 100%, where a robust accuracy often sits."""
    return math.hypot(wilson_sigma(p1, n1), wilson_sigma(p2, n2))


def format_regressions(regressions: list[Regression], rows: list[Row], tolerance: float) -> list[str]:
    """Lines for the console: every regression, then a one-line verdict."""
    if not regressions:
        return [f"gate passed: {len(rows)} row(s) within tolerance {tolerance:g} of the baseline"]
    keys = {regression.key for regression in regressions}
    return [f"REGRESSED {regression.describe()}" for regression in regressions] + [
        f"gate failed: {len(keys)} of {len(rows)} row(s) regressed"
    ]
