"""The regression gate: compare a report with a baseline and name every row that got worse.

CI runs the same evaluation on every change and fails the job when a clean or robust accuracy
falls by more than a tolerance. Rows are matched by :meth:`robustlab.report.Row.key`, so the two
reports must cover the same grid; a baseline row missing from the new report is bad input, not a
pass, because a gate that silently skips rows would let a regression through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from robustlab.errors import ConfigError
from robustlab.report import Report, Row

__all__ = ["METRICS", "Regression", "compare_reports", "format_regressions", "load_baseline"]

METRICS = ("clean_acc", "robust_acc")


@dataclass(frozen=True)
class Regression:
    """One metric of one row that fell by more than it is allowed to.

    ``allowed`` is the tolerance plus the statistical margin (``margin_sigmas`` standard errors of
    the difference of two binomial proportions measured on ``n`` samples each).
    """

    key: tuple[str, str, str, str, str]
    metric: str
    baseline: float
    new: float
    allowed: float

    def describe(self) -> str:
        """One line naming the row and the drop, e.g. for a CI log."""
        drop = self.baseline - self.new
        return (
            f"{' / '.join(self.key)}: {self.metric} {self.baseline:.4f} -> {self.new:.4f} "
            f"(drop {drop:.4f} > allowed {self.allowed:.4f})"
        )


def load_baseline(path: Path) -> Report:
    """Read a baseline report (another schema version is a :class:`ConfigError`)."""
    return Report.from_json(path)


def compare_reports(new: Report, baseline: Report, *, tolerance: float, margin_sigmas: float = 0.0) -> list[Regression]:
    """Return every clean/robust accuracy of ``baseline`` that ``new`` undercuts by more than allowed.

    Args:
        new: the report under test.
        baseline: the accepted scores.
        tolerance: allowed absolute drop in accuracy (0.02 = two points).
        margin_sigmas: extra allowance in standard errors of the difference, so that a small ``n``
            does not fail the gate on sampling noise alone (0 disables it).

    Raises:
        ConfigError: a negative tolerance or margin, or a baseline row the new report lacks.
    """
    if tolerance < 0 or margin_sigmas < 0:
        raise ConfigError(f"tolerance and margin must be >= 0, got {tolerance} and {margin_sigmas}")
    rows = {row.key(): row for row in new.rows}
    missing = [row.key() for row in baseline.rows if row.key() not in rows]
    if missing:
        shown = "; ".join(" / ".join(key) for key in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConfigError(
            f"the report covers another grid than the baseline: {len(missing)} baseline row(s) missing "
            f"({shown}{more}); rerun with the baseline's models, defenses, attacks and budgets"
        )
    found: list[Regression] = []
    for old in baseline.rows:
        current = rows[old.key()]
        for metric in METRICS:
            before, after = getattr(old, metric), getattr(current, metric)
            allowed = tolerance + margin_sigmas * _difference_se(before, old.n, after, current.n)
            if before - after > allowed + 1e-12:  # accuracies are ratios of counts: ignore float noise
                found.append(Regression(old.key(), metric, before, after, allowed))
    return found


def _difference_se(p1: float, n1: int, p2: float, n2: int) -> float:
    """Standard error of ``p1 - p2`` for two independent binomial proportions."""
    return math.sqrt(p1 * (1 - p1) / max(n1, 1) + p2 * (1 - p2) / max(n2, 1))


def format_regressions(regressions: list[Regression], rows: list[Row], tolerance: float) -> list[str]:
    """Lines for the console: every regression, then a one-line verdict."""
    if not regressions:
        return [f"gate passed: {len(rows)} row(s) within tolerance {tolerance:g} of the baseline"]
    keys = {regression.key for regression in regressions}
    return [f"REGRESSED {regression.describe()}" for regression in regressions] + [
        f"gate failed: {len(keys)} of {len(rows)} row(s) regressed"
    ]
