"""PGD under L2 (Madry et al., ICLR 2018)."""

from __future__ import annotations

import torch
from robustlab.attacks._pgd import l2_random_start, l2_step, projected_gradient_descent
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack
from robustlab.threat import Norm, ThreatModel

__all__ = ["PGDL2"]


@ATTACKS.register("pgdl2", summary="Projected Gradient Descent, L2, random start (white-box).", stochastic=True)
class PGDL2(Attack):
    """Towards Deep Learning Models Resistant to Adversarial Attacks, https://arxiv.org/abs/1706.06083.

    L2, white-box, ``steps`` forward+backward passes per sample (fewer with ``early_stop``); deterministic
    given the generator. Without a random start and without early stopping it computes exactly what
    ``torchattacks.PGDL2`` does.

    Args:
        eps: L2 budget in [0, 1] pixel units (0.5 is CIFAR-10's standard).
        step_size: size of each normalized-gradient step; default ``eps / 4``.
        steps: iterations.
        random_start: start from a random point in the eps-ball.
    """

    early_stopping = True

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

    def _run(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None, early_stop: bool = False
    ) -> Tensor:
        start = l2_random_start(x, self.eps, generator) if self.random_start else x
        step = l2_step(self.eps, self.step_size)
        return projected_gradient_descent(model, x, y, start, steps=self.steps, step=step, early_stop=early_stop)
