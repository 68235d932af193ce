"""PGD under L∞ (Madry et al., ICLR 2018)."""

from __future__ import annotations

from typing import Any

import torchattacks
from robustlab.attacks._torchattacks import TorchattacksAttack
from torch import Tensor, nn

from robustlab.attack import ATTACKS
from robustlab.threat import Norm, ThreatModel

__all__ = ["PGD"]


@ATTACKS.register("pgd", summary="Projected Gradient Descent, L∞, random start (white-box).", stochastic=True)
class PGD(TorchattacksAttack):
    """Towards Deep Learning Models Resistant to Adversarial Attacks, https://arxiv.org/abs/1706.06083.

    L∞, white-box, ``steps`` forward+backward passes per sample; random start drawn from the
    generator, so the result is deterministic given it.

    Args:
        eps: L∞ budget in [0, 1] pixel units.
        step_size: size of each signed-gradient step; default ``eps / 4`` (2/255 at 8/255).
        steps: iterations.
        random_start: start from a uniform point in the eps-ball.
    """

    def __init__(
        self, *, eps: float = 8 / 255, step_size: float | None = None, steps: int = 10, random_start: bool = True
    ) -> None:
        self.eps = eps
        self.step_size = eps / 4 if step_size is None else step_size
        self.steps = steps
        self.random_start = random_start

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(Norm.LINF, self.eps)

    def _build(self, model: nn.Module, x: Tensor, seed: int) -> Any:
        return torchattacks.PGD(
            model, eps=self.eps, alpha=self.step_size, steps=self.steps, random_start=self.random_start
        )
