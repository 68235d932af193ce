"""PGD under L∞ (Madry et al., ICLR 2018)."""

from __future__ import annotations

import torch
from robustlab.attacks._pgd import linf_random_start, linf_step, projected_gradient_descent
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack
from robustlab.threat import Norm, ThreatModel

__all__ = ["PGD"]


@ATTACKS.register("pgd", summary="Projected Gradient Descent, L∞, random start (white-box).", stochastic=True)
class PGD(Attack):
    """Towards Deep Learning Models Resistant to Adversarial Attacks, https://arxiv.org/abs/1706.06083.

    L∞, white-box, ``steps`` forward+backward passes per sample (fewer with ``early_stop``, which the
    evaluator asks for: a sample stops at its first misclassified iterate); random start drawn from the
    generator, so the result is deterministic given it. Without a random start and without early
    stopping it computes exactly what ``torchattacks.PGD`` does.

    Args:
        eps: L∞ budget in [0, 1] pixel units.
        step_size: size of each signed-gradient step; default ``eps / 4`` (2/255 at 8/255).
        steps: iterations.
        random_start: start from a uniform point in the eps-ball.
    """

    early_stopping = True

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

    def _run(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None, early_stop: bool = False
    ) -> Tensor:
        start = linf_random_start(x, self.eps, generator) if self.random_start else x
        step = linf_step(self.eps, self.step_size)
        return projected_gradient_descent(model, x, y, start, steps=self.steps, step=step, early_stop=early_stop)
