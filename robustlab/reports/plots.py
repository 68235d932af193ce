"""Robustness curves and image grids, drawn with matplotlib's headless Agg backend.

Figures are returned as PNG bytes so that callers can write them or embed them (base64) in a
self-contained HTML page; nothing here opens a window or needs a display.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial

import matplotlib

matplotlib.use("Agg")  # headless: CI machines and servers have no display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from robustlab.reports.report import WORST_CASE, Row
from robustlab.threat import format_eps

__all__ = ["Example", "curve_points", "image_grid_png", "robustness_curves_png", "step_points"]


@dataclass(frozen=True)
class Example:
    """One clean/adversarial pair to show, with the model's predictions as class names."""

    index: int
    label: str
    clean: Tensor
    adversarial: Tensor
    clean_pred: str
    adv_pred: str


Panel = tuple[str, str, str]
Lines = dict[str, list[tuple[float, float]]]
EPS_POINT, STEPS_POINT = "robust_at_eps*", "robust_at_steps="
"""The audit's sweep metrics: robust accuracy at ``eps`` times a factor, and at a number of APGD-CE steps."""


def curve_points(rows: Sequence[Row]) -> dict[Panel, Lines]:
    """Group rows into curves: panel ``(model, defense, mode)`` -> line ``attack (norm)`` -> ``[(eps, acc)]``.

    Every line starts at ``eps = 0`` with the clean accuracy (no budget, no attack); rows without a
    budget (worst case over several threats, minimum-norm attacks) have no place on an ε axis and
    are left out. An audit row adds its ε sweep (APGD-CE at each factor of its budget) as a line of its own.
    """
    panels: dict[Panel, Lines] = defaultdict(dict)
    for row in rows:
        eps = row.attack_config.get("eps")
        clean, robust = row.clean_acc, row.robust_acc
        if row.attack == WORST_CASE or not isinstance(eps, (int, float)) or clean is None or robust is None:
            continue
        lines = panels[(row.model, row.defense, row.threat_mode)]
        lines.setdefault(f"{row.attack} ({row.threat.split()[0]})", [(0.0, clean)]).append((float(eps), robust))
        swept = _swept(row, EPS_POINT, partial(_times, float(eps)))
        if swept:
            lines[f"{row.attack.split('(', 1)[0]}: APGD-CE ε sweep"] = [(0.0, clean), *swept]
    return {panel: {name: sorted(set(points)) for name, points in lines.items()} for panel, lines in panels.items()}


def step_points(rows: Sequence[Row]) -> dict[Panel, Lines]:
    """The audit rows' step sweeps: panel -> ``APGD-CE`` -> ``[(steps, robust acc)]`` at the row's budget."""
    panels: dict[Panel, Lines] = {}
    for row in rows:
        swept = _swept(row, STEPS_POINT, float)
        if swept:
            panels[(row.model, row.defense, row.threat_mode)] = {f"{row.attack.split('(', 1)[0]}: APGD-CE": swept}
    return panels


def _times(eps: float, factor: str) -> float:
    return min(1.0, eps * float(Fraction(factor)))


def _swept(row: Row, prefix: str, position: Callable[[str], float]) -> list[tuple[float, float]]:
    """A row's sweep metrics named ``prefix + POINT``, as ``(position(POINT), value)``."""
    return [(position(name[len(prefix) :]), v) for name, v in row.metric_values().items() if name.startswith(prefix)]


def robustness_curves_png(rows: Sequence[Row]) -> bytes:
    """Accuracy against budget, one panel per model x defense x threat mode, one line per attack; then, for
    each audit row, accuracy against APGD-CE iterations (a curve still falling at its end has not converged)."""
    panels = curve_points(rows)
    steps = step_points(rows)
    count = max(len(panels) + len(steps), 1)
    columns = min(3, count)
    figure, axes = plt.subplots(
        math.ceil(count / columns), columns, figsize=(4.6 * columns, 3.4 * math.ceil(count / columns)), squeeze=False
    )
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    if not panels and not steps:
        axes[0, 0].text(0.5, 0.5, "no budgeted attacks to plot", ha="center", va="center")
        axes[0, 0].set_axis_off()
    for ax, (panel, lines) in zip(axes.flat, panels.items(), strict=False):
        budgets = sorted({e for points in lines.values() for e, _ in points})
        _draw(ax, panel, lines, "ε (pixel units)")
        ax.set_xticks(budgets, [format_eps(e) if e else "0" for e in budgets], rotation=45, fontsize=8)
    for ax, (panel, lines) in zip(axes.flat[len(panels) :], steps.items(), strict=False):
        _draw(ax, panel, lines, "APGD-CE iterations (step sweep)")
    figure.tight_layout()
    return _png(figure)


def _draw(ax: Axes, panel: Panel, lines: Lines, xlabel: str) -> None:
    model, defense, mode = panel
    for name, points in lines.items():
        ax.plot([e for e, _ in points], [a for _, a in points], marker="o", label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{model} / {defense}" + ("" if mode == "-" else f" / {mode}"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def image_grid_png(examples: Sequence[Example]) -> bytes:
    """Rows of clean image, adversarial image and perturbation amplified to the full colour range.

    The perturbation is shown as ``0.5 + δ · 0.5 / max|δ|`` so that an invisible 8/255 change becomes
    visible; the amplification factor (``0.5 / max|δ|``) is printed with it.
    """
    figure, axes = plt.subplots(max(len(examples), 1), 3, figsize=(6.6, 2.3 * max(len(examples), 1)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for (left, middle, right), example in zip(axes, examples, strict=False):
        delta = example.adversarial - example.clean
        peak = float(delta.abs().max())
        scale = 0.5 / peak if peak > 0 else 1.0
        ok = "✓" if example.clean_pred == example.label else "✗"
        left.imshow(_hwc(example.clean), interpolation="nearest")
        left.set_title(f"#{example.index} clean: {example.clean_pred} {ok}\n(label {example.label})", fontsize=8)
        middle.imshow(_hwc(example.adversarial), interpolation="nearest")
        fooled = "fooled" if example.adv_pred != example.label else "not fooled"
        middle.set_title(f"adversarial: {example.adv_pred}\n({fooled})", fontsize=8)
        right.imshow(_hwc((0.5 + delta * scale).clamp(0, 1)), interpolation="nearest")
        right.set_title(f"perturbation ×{scale:.0f}\n(L∞ {peak * 255:.1f}/255)", fontsize=8)
    figure.tight_layout()
    return _png(figure)


def _hwc(image: Tensor) -> np.ndarray:
    image = image.detach().float().cpu()
    return image.expand(3, -1, -1).permute(1, 2, 0).numpy()  # grey images as RGB: one code path for imshow


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
