"""APGD (Croce & Hein, ICML 2020): step-size-free PGD with momentum and checkpoints."""

from __future__ import annotations

from typing import Any

import torchattacks
from robustlab.attacks._torchattacks import TorchattacksAttack, torchattacks_norm
from torch import Tensor, nn

from robustlab.attack import ATTACKS
from robustlab.errors import ConfigError
from robustlab.threat import Norm, ThreatModel

__all__ = ["APGD"]


@ATTACKS.register("apgd", summary="Auto-PGD with CE or DLR loss, L∞/L2 (white-box, parameter-free).", stochastic=True)
class APGD(TorchattacksAttack):
    """Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks,
    https://arxiv.org/abs/2003.01690.

    White-box, ``steps × n_restarts`` forward+backward passes per sample, deterministic given the
    generator (its seed is passed to torchattacks).

    Args:
        eps: budget in [0, 1] pixel units.
        norm: ``linf`` or ``l2``.
        steps: iterations per restart (100 in the paper's standard AutoAttack).
        n_restarts: random restarts.
        loss: ``ce`` (cross-entropy) or ``dlr`` (difference of logits ratio).
        rho: step-size halving threshold.
    """

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        norm: Norm | str = Norm.LINF,
        steps: int = 100,
        n_restarts: int = 1,
        loss: str = "ce",
        rho: float = 0.75,
    ) -> None:
        if loss not in ("ce", "dlr"):
            raise ConfigError(f"apgd loss must be ce or dlr, got {loss!r}")
        self.eps = eps
        self.norm = Norm(norm)
        self.steps = steps
        self.n_restarts = n_restarts
        self.loss = loss
        self.rho = rho

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, self.eps)

    def _build(self, model: nn.Module, x: Tensor, seed: int) -> Any:
        return torchattacks.APGD(
            model,
            norm=torchattacks_norm(self.norm),
            eps=self.eps,
            steps=self.steps,
            n_restarts=self.n_restarts,
            seed=seed,
            loss=self.loss,
            rho=self.rho,
        )
