"""A report's rows as Markdown and CSV, for pull-request comments, papers and spreadsheets.

The columns are the console table's (:func:`robustlab.reports.report.format_table`); CSV keeps full-precision
numbers and the attack configuration as JSON so that nothing is lost on the way to a spreadsheet.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from robustlab.reports.report import TABLE_COLUMNS, Row, row_value, shown_columns

__all__ = ["COLUMNS", "CSV_COLUMNS", "NUMERIC", "csv_table", "markdown_table"]

CSV_COLUMNS = (
    "model",
    "defense",
    "threat_mode",
    "attack",
    "threat",
    "n",
    "clean_acc",
    "robust_acc",
    "attack_success_rate",
    "mean_norm",
    "max_norm",
    "seconds",
    "attack_config",
    "kind",
    "task",
    "metrics",
)
# (title, Row field, format) of the human-readable tables: the console table less its timing column
COLUMNS = tuple(column for column in TABLE_COLUMNS if column[1] != "seconds")
NUMERIC = {"n", "clean_acc", "robust_acc", "attack_success_rate", "mean_norm", "max_norm"}


def markdown_table(rows: list[Row]) -> str:
    """A GitHub-flavoured Markdown table, numbers right-aligned, ``|`` in names escaped.

    Example:
        >>> row = Row("smallcnn", "none", "-", "pgd", "linf 8/255", 10, 1.0, 0.3, 0.7, 0.03, 0.03, 1.0)
        >>> print(markdown_table([row]).splitlines()[2])
        | smallcnn | none | - | pgd | linf 8/255 | 10 | 100.0% ±13.9 | 30.0% ±24.8 | 70.00% | 0.0300 | 0.0300 |
    """
    columns = shown_columns(COLUMNS, rows)
    header = "| " + " | ".join(title for title, _, _ in columns) + " |"
    rule = "|" + "|".join("---:" if name in NUMERIC else "---" for _, name, _ in columns) + "|"
    body = [
        "| " + " | ".join(_cell(row_value(row, name), fmt).replace("|", "\\|") for _, name, fmt in columns) + " |"
        for row in rows
    ]
    return "\n".join([header, rule, *body])


def csv_table(rows: list[Row]) -> str:
    """CSV with one line per row, full precision, empty cells for missing norms."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = [getattr(row, name) for name in CSV_COLUMNS]
        values[CSV_COLUMNS.index("attack_config")] = json.dumps(row.attack_config, sort_keys=True)
        values[-1] = json.dumps(row.metric_values(), sort_keys=True)
        writer.writerow("" if value is None else value for value in values)
    return buffer.getvalue()


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)
