"""Threat models and the check every attack output goes through.

A perturbation outside its budget, outside ``[0, 1]`` or non-finite is a bug in the attack: it
raises :class:`ThreatModelViolation` and is never clipped silently, because a clipped result would
report a number for an attack that did not run as declared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from robustlab.budgets import format_eps, parse_eps
from robustlab.enums import ValueEnum
from robustlab.errors import ConfigError, ThreatModelViolation

__all__ = ["Norm", "ThreatModel", "format_eps", "parse_eps", "perturbation_norm", "verify"]


class Norm(ValueEnum):
    """How a perturbation's size is measured."""

    LINF = "linf"
    L2 = "l2"
    L0 = "l0"
    PATCH = "patch"
    UNBOUNDED = "unbounded"


@dataclass(frozen=True)
class ThreatModel:
    """A norm and a budget in ``[0, 1]`` pixel units; ``eps=None`` means unbounded (minimum-norm attacks).

    Example:
        >>> ThreatModel(Norm.LINF, 8 / 255).describe()
        'linf 8/255'
    """

    norm: Norm
    eps: float | None = None

    def __post_init__(self) -> None:
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps >= 0):
            raise ConfigError(f"eps must be a finite number >= 0, got {self.eps}")

    def describe(self) -> str:
        """Human-readable form used in tables: ``linf 8/255``, ``l2 0.5``, ``l2 unbounded``."""
        if self.norm is Norm.UNBOUNDED:
            return "unbounded"
        return f"{self.norm} {format_eps(self.eps) if self.eps is not None else 'unbounded'}"


def perturbation_norm(x: Tensor, x_adv: Tensor, norm: Norm) -> Tensor:
    """Per-sample size of ``x_adv - x`` in ``norm`` (L∞ for patch/unbounded), shape ``(B,)``."""
    delta = (x_adv - x).flatten(1).double()
    if norm is Norm.L2:
        return delta.norm(p=2, dim=1)
    if norm is Norm.L0:
        return (delta != 0).sum(dim=1).double()
    return delta.abs().amax(dim=1) if delta.shape[1] else delta.new_zeros(delta.shape[0])


def verify(threat: ThreatModel, x: Tensor, x_adv: Tensor, *, atol: float = 1e-6) -> None:
    """Raise :class:`ThreatModelViolation` unless ``x_adv`` is a valid attack output for ``x``.

    Checks shape, dtype, device, finiteness, the ``[0, 1]`` box and the budget (with ``atol`` for
    float32 rounding of ``x + delta``).
    """
    if x_adv.shape != x.shape or x_adv.dtype != x.dtype or x_adv.device != x.device:
        raise ThreatModelViolation(
            f"attack output is {tuple(x_adv.shape)} {x_adv.dtype} on {x_adv.device}, "
            f"input was {tuple(x.shape)} {x.dtype} on {x.device}"
        )
    if not torch.isfinite(x_adv).all():
        raise ThreatModelViolation("attack output has NaN or infinite values")
    low, high = float(x_adv.min()) if x_adv.numel() else 0.0, float(x_adv.max()) if x_adv.numel() else 0.0
    if low < 0 or high > 1:
        raise ThreatModelViolation(f"attack output leaves [0, 1]: min {low:.6g}, max {high:.6g}")
    if threat.eps is None or threat.norm in (Norm.UNBOUNDED, Norm.PATCH) or x.shape[0] == 0:
        return
    size = perturbation_norm(x, x_adv, threat.norm)
    worst = float(size.max())
    if worst > threat.eps + atol:
        raise ThreatModelViolation(
            f"perturbation of {threat.norm} size {worst:.8g} exceeds the budget {threat.eps:.8g} ({threat.describe()})"
        )
