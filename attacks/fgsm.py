"""FGSM (Goodfellow et al., ICLR 2015): one signed-gradient step of size eps."""

from __future__ import annotations

from typing import Any

from robustlab.attacks._torchattacks import TorchattacksAttack
from torch import Tensor, nn

from robustlab.attack import ATTACKS
from robustlab.threat import Norm, ThreatModel

__all__ = ["FGSM"]


@ATTACKS.register("fgsm", summary="Fast Gradient Sign Method, one L∞ step (white-box).", stochastic=False)
class FGSM(TorchattacksAttack):
    """Explaining and Harnessing Adversarial Examples, https://arxiv.org/abs/1412.6572.

    L∞, white-box, one forward and one backward pass per sample, deterministic.
    """

    def __init__(self, *, eps: float = 8 / 255) -> None:
        self.eps = eps

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(Norm.LINF, self.eps)

    def _build(self, model: nn.Module, x: Tensor, seed: int) -> Any:
        import torchattacks  # its scipy import costs every command a second: only when run

        return torchattacks.FGSM(model, eps=self.eps)
