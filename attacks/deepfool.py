"""DeepFool (Moosavi-Dezfooli et al., CVPR 2016)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from robustlab.attacks._torchattacks import TorchattacksAttack, within_budget
from torch import Tensor, nn

from robustlab.attack import ATTACKS, CallContext
from robustlab.threat import Norm

__all__ = ["DeepFool"]


@ATTACKS.register(
    "deepfool", summary="DeepFool L2, minimum-norm (white-box); bounded when eps is given.", stochastic=False
)
@dataclass(kw_only=True, eq=False)
class DeepFool(TorchattacksAttack):
    """DeepFool: a simple and accurate method to fool deep neural networks, https://arxiv.org/abs/1511.04599.

    Walks to the nearest linearized decision boundary, white-box, up to ``steps`` Jacobian evaluations
    per sample (one backward pass per class each: slow for many classes), deterministic. With ``eps``
    set, examples larger than ``eps`` do not count.

    Args:
        steps: maximum iterations.
        overshoot: step past the boundary, as a fraction.
        eps: optional L2 budget.
    """

    norm: ClassVar[Norm] = Norm.L2
    steps: int = 50
    overshoot: float = 0.02
    eps: float | None = None

    def _build(self, model: nn.Module, x: Tensor, seed: int) -> Any:
        import torchattacks  # its scipy import costs every command a second: only when run

        return torchattacks.DeepFool(model, steps=self.steps, overshoot=self.overshoot)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        return within_budget(x, super()._run(model, x, y, context), self.norm, self.eps)
