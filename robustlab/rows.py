"""Rows and per-sample records from a target's stored results: one row per cell, a worst case per threat mode.

For tasks with a per-sample worst case (classification) the worst-case row counts a sample as robust only
when every attack of its threat mode failed on it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from robustlab.jsonfile import json_ready
from robustlab.reports.report import WORST_CASE, Row
from robustlab.runners import Cell
from robustlab.tasks import InputTask, Task, WorstCaseTask
from robustlab.victims import Target

__all__ = ["aggregate", "concat"]


def concat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Per-sample tensors of consecutive batches joined on the CPU (per-unit scalars like ``seconds`` summed)."""
    if not parts:
        return {}
    out = {}
    for name in parts[0]:
        values = [part[name].cpu() for part in parts]
        out[name] = torch.stack([v.sum() for v in values]) if name in ("seconds", "halvings") else torch.cat(values)
    return out


def aggregate(
    target: Target, cells: list[Cell], cleans: dict[str, dict[str, Tensor]], indices: Tensor
) -> tuple[list[Row], list[dict[str, Any]]]:
    """Rows and per-sample blocks of one target: a row per cell, plus a worst case per threat mode and task."""
    rows: list[Row] = []
    samples: list[dict[str, Any]] = []
    for mode in dict.fromkeys(cell.mode for cell in cells):
        mode_cells = [cell for cell in cells if cell.mode == mode]
        blocks: dict[str, dict[str, Any]] = {}
        for cell in mode_cells:
            rows.append(_cell_row(target, cell, cleans))
            if cell.metrics is None:
                block = blocks.setdefault(
                    cell.task.name, _block(target, mode, cell.task, cleans[cell.task.name], indices)
                )
                block["attacks"].append(_sample_results(cell, cleans[cell.task.name]))
        for task_name, block in blocks.items():
            group = [cell for cell in mode_cells if cell.task.name == task_name and cell.metrics is None]
            task = group[0].task
            if isinstance(task, WorstCaseTask) and len(group) > 1:
                rows.append(_worst_case_row(target, mode, task, group, cleans[task_name]))
            samples.append(block)
    return rows, samples


def _row_task(target: Target, task: Task) -> str:
    return f"downstream/{target.head}" if target.head and task.name == target.task else task.name


def _make_row(
    target: Target,
    mode: str,
    *,
    attack: str,
    threat: str,
    kind: str,
    task: Task,
    n: int,
    metrics: dict[str, float],
    seconds: float,
    norms: Tensor | None = None,
    attack_config: dict[str, Any] | None = None,
    artifact: str | None = None,
    success_rule: str = "",
) -> Row:
    described = {
        m.name: {
            "value": metrics[m.name],
            "higher_is_better": m.higher_is_better,
            "gated": m.gated,
            "proportion": m.proportion,
        }
        for m in task.metrics
        if m.name in metrics
    }
    return Row(
        model=target.names[0],
        defense=target.names[1],
        threat_mode=mode,
        attack=attack,
        threat=threat,
        n=n,
        clean_acc=metrics.get("clean_acc"),
        robust_acc=metrics.get("robust_acc"),
        attack_success_rate=metrics.get("attack_success_rate"),
        mean_norm=norms.mean().item() if norms is not None and len(norms) else None,
        max_norm=norms.max().item() if norms is not None and len(norms) else None,
        seconds=seconds,
        attack_config=attack_config or {},
        kind=kind,
        task=_row_task(target, task),
        classifies=task.classifies,
        metrics=described,
        artifact=artifact,
        success_rule=success_rule,
    )


def _cell_row(target: Target, cell: Cell, cleans: dict[str, dict[str, Tensor]]) -> Row:
    common = {
        "attack": cell.spec.label(),
        "threat": cell.attack.threat.describe(),
        "kind": cell.attack.kind.value,
        "task": cell.task,
        "attack_config": json_ready(cell.attack.config()),
        "artifact": cell.artifact,
    }
    if cell.metrics is not None:  # generative: scored once, no inputs
        return _make_row(target, cell.mode, n=0, metrics=cell.metrics, seconds=cell.seconds, **common)
    clean, adversarial = cleans[cell.task.name], concat(cell.results)
    y = clean["label"]
    success = _success(cell.input_task, clean, adversarial)
    return _make_row(
        target,
        cell.mode,
        n=len(y),
        metrics=cell.input_task.aggregate(y, clean, adversarial),
        seconds=float(adversarial["seconds"].sum()),
        norms=adversarial["norm"][success],
        success_rule=target.success_rule(cell.attack),
        **common,
    )


def _success(task: InputTask, clean: dict[str, Tensor], adversarial: dict[str, Tensor]) -> Tensor:
    """Samples the attack broke: attacked and no longer robust (all attacked ones for tasks without a worst case)."""
    attacked = adversarial["attacked"].bool()
    if not isinstance(task, WorstCaseTask):
        return attacked
    return attacked & ~task.robust(clean["label"], clean, adversarial)


def _worst_case_row(target: Target, mode: str, task: WorstCaseTask, cells: list[Cell], clean: dict[str, Tensor]) -> Row:
    y = clean["label"]
    robust = torch.ones_like(y, dtype=torch.bool)
    for cell in cells:
        robust &= task.robust(y, clean, concat(cell.results))
    threats = {cell.attack.threat.describe() for cell in cells}
    rules = {target.success_rule(cell.attack) for cell in cells}
    return _make_row(
        target,
        mode,
        attack=WORST_CASE,
        threat=threats.pop() if len(threats) == 1 else "mixed",
        kind="worst-case",
        task=task,
        n=len(y),
        metrics=task.summarize(y, clean, robust),
        seconds=sum(float(concat(cell.results)["seconds"].sum()) for cell in cells),
        success_rule=rules.pop() if len(rules) == 1 else "mixed",
    )


def _block(target: Target, mode: str, task: Task, clean: dict[str, Tensor], indices: Tensor) -> dict[str, Any]:
    """The per-sample record of one target, threat mode and task: labels, clean results, one entry per attack."""
    return {
        "model": target.names[0],
        "defense": target.names[1],
        "threat_mode": mode,
        "task": _row_task(target, task),
        "classifies": task.classifies,
        "index": indices.tolist(),
        "label": clean["label"].tolist(),
        **{f"clean_{name}": value.tolist() for name, value in clean.items() if name != "label"},
        "attacks": [],
    }


def _sample_results(cell: Cell, clean: dict[str, Tensor]) -> dict[str, Any]:
    adversarial = concat(cell.results)
    per_sample = {
        name: value.tolist()
        for name, value in adversarial.items()
        if name not in ("norm", "attacked", "seconds", "halvings") and len(value) == len(clean["label"])
    }
    return {
        "attack": cell.spec.label(),
        "threat": cell.attack.threat.describe(),
        **per_sample,
        "success": _success(cell.input_task, clean, adversarial).tolist(),
        "norm": [round(v, 7) for v in adversarial["norm"].tolist()],
    }
