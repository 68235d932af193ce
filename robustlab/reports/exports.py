"""A report in the shapes other tools read: a RobustBench ``model_info`` entry, and one record per sample.

The ``robustbench`` entry writes accuracies as percent strings that hold the measured value exactly
(``repr`` of the float), so ``--leaderboard`` reading it back measures a difference of exactly 0.
The per-sample records (JSON lines or CSV) carry each sample's index, label, clean prediction, each
attack's success and the worst case, for paired comparisons between runs.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from robustlab.data.base import DataSpec
from robustlab.errors import ConfigError
from robustlab.reports.report import Report

__all__ = ["robustbench_entry", "sample_records", "samples_csv", "samples_jsonl"]


def robustbench_entry(report: Report) -> bytes:
    """The report's one undefended classifier as a RobustBench ``model_info`` JSON."""
    rows = [row for row in report.rows if row.defense == "none" and row.classifies]
    models = sorted({row.model for row in rows})
    if len(models) != 1:
        found = ", ".join(models) or "none"
        raise ConfigError(f"--format robustbench describes one undefended classifier; the report has {found}")
    autoattack = next((row for row in rows if row.attack == "autoattack"), None)
    norm, _, eps = (autoattack.threat if autoattack else "").partition(" ")
    data = DataSpec.parse(str(report.config.get("data", ""))).name
    entry = {
        "name": models[0].removeprefix("robustbench:").partition("[")[0],
        "dataset": {"imagefolder": "imagenet"}.get(data, data),
        "threat_model": {"linf": "Linf", "l2": "L2"}.get(norm, norm),
        "eps": eps,
        "clean_acc": _percent(rows[0].clean_acc),
        "reported": "",
        "autoattack_acc": _percent(autoattack.robust_acc) if autoattack else "",
        "external": "",
        "unreliable": False,
        "footnote": f"measured by robustlab on {rows[0].n} samples of {report.config.get('data')} "
        f"(subset {report.config.get('subset', 'stratified')})",
    }
    return (json.dumps(entry, indent=2) + "\n").encode()


def sample_records(report: Report) -> list[dict[str, Any]]:
    """One record per sample and target: index, label, clean prediction, each attack's success, worst case."""
    records = []
    for block in report.samples:
        attacks = block.get("attacks", [])
        for i, index in enumerate(block["index"]):
            success = {f"{a['attack']} {a['threat']}": bool(a["success"][i]) for a in attacks}
            records.append(
                {
                    "model": block["model"],
                    "defense": block["defense"],
                    "threat_mode": block["threat_mode"],
                    "index": index,
                    "label": block["label"][i],
                    "clean_pred": block["clean_pred"][i] if "clean_pred" in block else None,
                    **success,
                    "worst_case": any(success.values()),
                }
            )
    return records


def samples_jsonl(report: Report) -> bytes:
    """:func:`sample_records` as JSON lines."""
    return "".join(json.dumps(record) + "\n" for record in sample_records(report)).encode()


def samples_csv(report: Report) -> bytes:
    """:func:`sample_records` as CSV; a column an attack lacks (another target's grid) is empty."""
    records = sample_records(report)
    columns = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue().encode()


def _percent(value: float | None) -> str:
    return "" if value is None else repr(100 * value)
