"""DeepFool (Moosavi-Dezfooli et al., CVPR 2016)."""

from __future__ import annotations

from typing import Any

from robustlab.attacks._torchattacks import TorchattacksAttack, within_budget
from torch import Tensor, nn

from robustlab.attack import ATTACKS, CallContext
from robustlab.threat import Norm, ThreatModel

__all__ = ["DeepFool"]


@ATTACKS.register(
    "deepfool", summary="DeepFool L2, minimum-norm (white-box); bounded when eps is given.", stochastic=False
)
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

    def __init__(self, *, steps: int = 50, overshoot: float = 0.02, eps: float | None = None) -> None:
        self.steps = steps
        self.overshoot = overshoot
        self.eps = eps

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(Norm.L2, self.eps)

    def _build(self, model: nn.Module, x: Tensor, seed: int) -> Any:
        import torchattacks  # its scipy import costs every command a second: only when run

        return torchattacks.DeepFool(model, steps=self.steps, overshoot=self.overshoot)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        return within_budget(x, super()._run(model, x, y, context), Norm.L2, self.eps)
