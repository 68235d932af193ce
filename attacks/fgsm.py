"""FGSM (Goodfellow et al., ICLR 2015): one signed-gradient step of size eps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from robustlab.attacks._torchattacks import TorchattacksAttack
from torch import Tensor, nn

from robustlab.attack import ATTACKS
from robustlab.threat import Norm

__all__ = ["FGSM"]


@ATTACKS.register("fgsm", summary="Fast Gradient Sign Method, one L∞ step (white-box).", stochastic=False)
@dataclass(kw_only=True, eq=False)
class FGSM(TorchattacksAttack):
    """Explaining and Harnessing Adversarial Examples, https://arxiv.org/abs/1412.6572.

    L∞, white-box, one forward and one backward pass per sample, deterministic.
    """

    norm: ClassVar[Norm] = Norm.LINF
    eps: float = 8 / 255

    def _build(self, model: nn.Module, x: Tensor, seed: int) -> Any:
        import torchattacks  # its scipy import costs every command a second: only when run

        return torchattacks.FGSM(model, eps=self.eps)
