"""Targeted APGD with the DLR loss (Croce & Hein, ICML 2020)."""

from __future__ import annotations

from typing import Any

import torchattacks
from robustlab.attacks._torchattacks import MultiTargetedAttack, torchattacks_norm
from torch import nn

from robustlab.attack import ATTACKS
from robustlab.threat import Norm

__all__ = ["APGDT"]


@ATTACKS.register(
    "apgdt", summary="Targeted Auto-PGD, DLR loss over the top-9 classes, L∞/L2 (white-box).", stochastic=True
)
class APGDT(MultiTargetedAttack):
    """Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks,
    https://arxiv.org/abs/2003.01690.

    Runs once per target class (the ``n_target_classes`` highest-scoring wrong classes; the
    reference uses 9, torchattacks defaults to all of them), white-box,
    ``steps × n_restarts × n_target_classes`` passes per sample, deterministic given the generator.

    Args:
        eps: budget in [0, 1] pixel units.
        norm: ``linf`` or ``l2``.
        steps: iterations per target and restart.
        n_restarts: random restarts.
        n_target_classes: how many target classes to try.
        rho: step-size halving threshold.
    """

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        norm: Norm | str = Norm.LINF,
        steps: int = 100,
        n_restarts: int = 1,
        n_target_classes: int = 9,
        rho: float = 0.75,
    ) -> None:
        super().__init__(eps=eps, norm=norm, steps=steps, n_restarts=n_restarts, n_target_classes=n_target_classes)
        self.rho = rho

    def _build_targeted(self, model: nn.Module, n_classes: int, seed: int) -> Any:
        return torchattacks.APGDT(
            model,
            norm=torchattacks_norm(self.norm),
            eps=self.eps,
            steps=self.steps,
            n_restarts=self.n_restarts,
            seed=seed,
            rho=self.rho,
            n_classes=n_classes,
        )
