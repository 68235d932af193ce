"""PGD under L∞ (Madry et al., ICLR 2018)."""

from __future__ import annotations

from dataclasses import dataclass

from robustlab.attacks._pgd import ProjectedGradientAttack

from robustlab.attack import ATTACKS
from robustlab.threat import Norm

__all__ = ["PGD"]


@ATTACKS.register("pgd", summary="Projected Gradient Descent, L∞, random start (white-box).", stochastic=True)
@dataclass(kw_only=True, eq=False)
class PGD(ProjectedGradientAttack):
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

    norm = Norm.LINF

    eps: float = 8 / 255
