"""PGD under L2 (Madry et al., ICLR 2018)."""

from __future__ import annotations

from dataclasses import dataclass

from robustlab.attacks._pgd import ProjectedGradientAttack

from robustlab.attack import ATTACKS
from robustlab.threat import Norm

__all__ = ["PGDL2"]


@ATTACKS.register("pgdl2", summary="Projected Gradient Descent, L2, random start (white-box).", stochastic=True)
@dataclass(kw_only=True, eq=False)
class PGDL2(ProjectedGradientAttack):
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

    norm = Norm.L2

    eps: float = 0.5
