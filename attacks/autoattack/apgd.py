"""APGD (Croce & Hein, ICML 2020): step-size-free PGD with momentum and checkpoints, on robustlab's own loop."""

from __future__ import annotations

from dataclasses import dataclass

from robustlab.attacks.autoattack._apgd import APGDAttack, APGDConfig

from robustlab.attack import ATTACKS
from robustlab.errors import ConfigError
from robustlab.threat import Norm

__all__ = ["APGD"]


@ATTACKS.register("apgd", summary="Auto-PGD with CE or DLR loss, L∞/L2 (white-box, parameter-free).", stochastic=True)
@dataclass(kw_only=True, eq=False)
class APGD(APGDAttack):
    """Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks,
    https://arxiv.org/abs/2003.01690.

    White-box, at most ``steps × n_restarts × eot`` forward+backward passes per sample (a sample stops
    at its first misclassified iterate when the evaluator asks for early stopping, which changes no
    result); the restarts of a sample run side by side in one batch. Deterministic given the generator.

    Args:
        eps: budget in [0, 1] pixel units.
        norm: ``linf`` or ``l2``.
        steps: iterations per restart (100 in the paper's standard AutoAttack).
        n_restarts: random restarts.
        loss: ``ce`` (cross-entropy) or ``dlr`` (difference of logits ratio).
        rho: step-size halving threshold.
        eot: gradients averaged over this many forward passes, for randomized models (20 in AutoAttack-rand).
    """

    eps: float = 8 / 255
    norm: Norm | str = Norm.LINF
    steps: int = 100
    n_restarts: int = 1
    loss: str = "ce"
    rho: float = 0.75
    eot: int = 1

    def __post_init__(self) -> None:
        if self.loss not in ("ce", "dlr"):
            raise ConfigError(f"apgd loss must be ce or dlr, got {self.loss!r}")
        self.norm = Norm(self.norm)

    def settings(self) -> APGDConfig:
        norm = self.threat.norm
        return APGDConfig(norm, self.eps, self.steps, self.loss, n_restarts=self.n_restarts, eot=self.eot, rho=self.rho)
