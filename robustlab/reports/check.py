"""The shape a report JSON must have before it is read, so a hand-edited or foreign file is one clear line.

:meth:`robustlab.reports.report.Report.from_json` builds dataclasses straight from the document; without this
check a missing key or a string where a number belongs surfaced later as a traceback in the gate, and a
NaN accuracy passed the gate both ways (every comparison with NaN is false): numbers must be finite, and
accuracies and other proportions within ``[0, 1]``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from robustlab.errors import DataError

__all__ = ["check_report_document"]

_NUMBER = (int, float)
_TOP: dict[str, type] = {"config": dict, "environment": dict, "rows": list}
_LISTS = ("diagnostics", "samples", "fidelity", "leaderboard")
_ROW_TEXT = ("model", "defense", "threat_mode", "attack", "threat")
_ROW_PROPORTIONS = ("clean_acc", "robust_acc", "attack_success_rate")
_ROW_OPTIONAL_NUMBERS = (*_ROW_PROPORTIONS, "mean_norm", "max_norm")


def check_report_document(path: Path, data: Any) -> None:
    """Raise :class:`DataError` naming ``path`` and the first thing in ``data`` that a report cannot be."""
    if not isinstance(data, dict):
        _fail(path, f"it holds a JSON {_json_type(data)}, not a report object")
    for key, kind in _TOP.items():
        if key not in data:
            _fail(path, f"it lacks the key {key!r}")
        _expect(path, key, data[key], kind)
    for key in _LISTS:
        if key in data:
            _expect(path, key, data[key], list)
            for i, item in enumerate(data[key]):
                _expect(path, f"{key}[{i}]", item, dict)
    for i, row in enumerate(data["rows"]):
        _check_row(path, i, row)


def _check_row(path: Path, i: int, row: Any) -> None:
    where = f"rows[{i}]"
    _expect(path, where, row, dict)
    for name in (*_ROW_TEXT, "n", "seconds"):
        if name not in row:
            _fail(path, f"{where} lacks the key {name!r}")
    for name in _ROW_TEXT:
        _expect(path, f"{where}.{name}", row[name], str)
    _expect(path, f"{where}.n", row["n"], int)
    if "task" in row:
        _expect(path, f"{where}.task", row["task"], str)
    if not isinstance(row.get("classifies", True), bool):
        _fail(path, f"{where}.classifies is a JSON {_json_type(row['classifies'])}, expected a boolean")
    _number(path, f"{where}.seconds", row["seconds"])
    for name in _ROW_OPTIONAL_NUMBERS:
        if row.get(name) is not None:
            _number(path, f"{where}.{name}", row[name], proportion=name in _ROW_PROPORTIONS)
    metrics = row.get("metrics", {})
    _expect(path, f"{where}.metrics", metrics, dict)
    for name, metric in metrics.items():
        _expect(path, f"{where}.metrics.{name}", metric, dict)
        _number(path, f"{where}.metrics.{name}.value", metric.get("value"), proportion=bool(metric.get("proportion")))


def _number(path: Path, where: str, value: Any, *, proportion: bool = False) -> None:
    """A finite JSON number, within ``[0, 1]`` for a proportion (the gate compares these)."""
    _expect(path, where, value, _NUMBER)
    if not math.isfinite(value):
        _fail(path, f"{where} is {value}, not a finite number (a gate must not pass on it)")
    if proportion and not 0 <= value <= 1:
        _fail(path, f"{where} is {value}, outside [0, 1] for a proportion")


def _expect(path: Path, where: str, value: Any, kind: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):  # JSON true is not a number
        names = " or ".join(_json_type(k()) for k in (kind if isinstance(kind, tuple) else (kind,)))
        _fail(path, f"{where} is a JSON {_json_type(value)}, expected a {names}")


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (dict, "object"), (list, "array"), (str, "string"), (int, "integer")):
        if isinstance(value, kind):
            return name
    return "number" if isinstance(value, float) else "null"


def _fail(path: Path, what: str) -> None:
    raise DataError(f"report {path} is not a robustlab report: {what}; regenerate it with robustlab eval")
