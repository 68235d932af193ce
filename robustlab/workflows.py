"""What ``compare``, ``report``, ``generate`` and ``run`` do once their options are parsed.

Kept apart from :mod:`robustlab.cli` (declarative click definitions) and from the library modules
(which never print), like :mod:`robustlab.commands` is for ``eval``.
"""

from __future__ import annotations

import click

from robustlab.gate import compare_reports, format_regressions
from robustlab.report import Report

__all__ = ["gate"]


def gate(report: Report, baseline: Report, *, tolerance: float, margin_sigmas: float) -> None:
    """Print the gate's verdict; exit 1 when any row regressed (the documented "a check failed" code)."""
    regressions = compare_reports(report, baseline, tolerance=tolerance, margin_sigmas=margin_sigmas)
    for line in format_regressions(regressions, baseline.rows, tolerance):
        click.echo(line)
    if regressions:
        click.get_current_context().exit(1)
