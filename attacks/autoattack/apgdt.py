"""Targeted APGD with the DLR loss (Croce & Hein, ICML 2020), every target class in one batch."""

from __future__ import annotations

from dataclasses import dataclass

from robustlab.attacks.autoattack._apgd import APGDAttack, APGDConfig

from robustlab.attack import ATTACKS
from robustlab.threat import Norm

__all__ = ["APGDT"]


@ATTACKS.register(
    "apgdt", summary="Targeted Auto-PGD, DLR loss over the top-9 classes, L∞/L2 (white-box).", stochastic=True
)
@dataclass(kw_only=True, eq=False)
class APGDT(APGDAttack):
    """Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks,
    https://arxiv.org/abs/2003.01690.

    Targets the ``n_target_classes`` highest-scoring wrong classes of the clean input (the reference
    uses 9; a model with fewer classes gets all its wrong ones), each a row of one batch: a sample stops
    at its first successful target. White-box, at most ``steps × n_restarts × n_target_classes`` passes
    per sample, deterministic given the generator. Needs at least 4 classes (the DLR denominator).

    Args:
        eps: budget in [0, 1] pixel units.
        norm: ``linf`` or ``l2``.
        steps: iterations per target and restart.
        n_restarts: random restarts.
        n_target_classes: how many target classes to try.
        rho: step-size halving threshold.
    """

    eps: float = 8 / 255
    norm: Norm | str = Norm.LINF
    steps: int = 100
    n_restarts: int = 1
    n_target_classes: int = 9
    rho: float = 0.75

    def __post_init__(self) -> None:
        self.norm = Norm(self.norm)

    def settings(self) -> APGDConfig:
        norm, targets = self.threat.norm, self.n_target_classes
        return APGDConfig(norm, self.eps, self.steps, "dlr-targeted", self.n_restarts, targets, rho=self.rho)
