"""Carlini & Wagner L2 attack (IEEE S&P 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from robustlab.attacks._torchattacks import TorchattacksAttack, within_budget
from torch import Tensor, nn

from robustlab.attack import ATTACKS, CallContext
from robustlab.threat import Norm

__all__ = ["CW"]


@ATTACKS.register(
    "cw", summary="Carlini-Wagner L2, minimum-norm (white-box); bounded when eps is given.", stochastic=False
)
@dataclass(kw_only=True, eq=False)
class CW(TorchattacksAttack):
    """Towards Evaluating the Robustness of Neural Networks, https://arxiv.org/abs/1608.04644.

    Minimizes the L2 norm of the perturbation with Adam on the tanh-reparameterised image, white-box,
    ``steps`` forward+backward passes per sample, deterministic. With ``eps`` set, examples larger than
    ``eps`` do not count (the clean input stands for them); without it the threat is unbounded and
    the perturbation norms are the result.

    Args:
        c: weight of the misclassification term against the distance.
        kappa: confidence margin.
        steps: Adam iterations.
        lr: Adam learning rate.
        eps: optional L2 budget.
    """

    norm: ClassVar[Norm] = Norm.L2
    c: float = 1.0
    kappa: float = 0.0
    steps: int = 100
    lr: float = 0.01
    eps: float | None = None

    def _build(self, model: nn.Module, x: Tensor, seed: int) -> Any:
        import torchattacks  # its scipy import costs every command a second: only when run

        return torchattacks.CW(model, c=self.c, kappa=self.kappa, steps=self.steps, lr=self.lr)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        return within_budget(x, super()._run(model, x, y, context), self.norm, self.eps)
