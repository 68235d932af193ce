"""PGD under L2 (Madry et al., ICLR 2018)."""

from __future__ import annotations

from typing import Any

import torchattacks
from robustlab.attacks._torchattacks import TorchattacksAttack
from torch import Tensor, nn

from robustlab.attack import ATTACKS
from robustlab.threat import Norm, ThreatModel

__all__ = ["PGDL2"]


@ATTACKS.register("pgdl2", summary="Projected Gradient Descent, L2, random start (white-box).", stochastic=True)
class PGDL2(TorchattacksAttack):
    """Towards Deep Learning Models Resistant to Adversarial Attacks, https://arxiv.org/abs/1706.06083.

    L2, white-box, ``steps`` forward+backward passes per sample; deterministic given the generator.

    Args:
        eps: L2 budget in [0, 1] pixel units (0.5 is CIFAR-10's standard).
        step_size: size of each normalized-gradient step; default ``eps / 4``.
        steps: iterations.
        random_start: start from a random point in the eps-ball.
    """

    def __init__(
        self, *, eps: float = 0.5, step_size: float | None = None, steps: int = 10, random_start: bool = True
    ) -> None:
        self.eps = eps
        self.step_size = eps / 4 if step_size is None else step_size
        self.steps = steps
        self.random_start = random_start

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(Norm.L2, self.eps)

    def _build(self, model: nn.Module, x: Tensor, seed: int) -> Any:
        return torchattacks.PGDL2(
            model, eps=self.eps, alpha=self.step_size, steps=self.steps, random_start=self.random_start
        )
