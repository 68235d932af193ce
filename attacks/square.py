"""Square Attack (Andriushchenko et al., ECCV 2020): score-based black-box random search."""

from __future__ import annotations

from typing import Any

import torchattacks
from robustlab.attacks._torchattacks import TorchattacksAttack, torchattacks_norm
from torch import Tensor, nn

from robustlab.attack import ATTACKS
from robustlab.threat import Norm, ThreatModel

__all__ = ["Square"]


@ATTACKS.register(
    "square", summary="Square Attack, score-based black-box random search, L∞/L2; no gradients.", stochastic=True
)
class Square(TorchattacksAttack):
    """Square Attack: a query-efficient black-box adversarial attack via random search,
    https://arxiv.org/abs/1912.00049.

    Uses only the model's scores (no gradients), up to ``n_queries`` forward passes per sample,
    deterministic given the generator. A black-box attack that beats the white-box ones is a
    gradient-masking symptom.

    Args:
        eps: budget in [0, 1] pixel units.
        norm: ``linf`` or ``l2``.
        n_queries: query budget per sample.
        n_restarts: random restarts.
        p_init: initial fraction of pixels changed per square.
        rescale_schedule: stretch the schedule of square sizes to ``n_queries`` (torchattacks' and the
            reference's default); AutoAttack's standard version keeps the schedule of 10000 queries.
    """

    uses_gradients = False

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        norm: Norm | str = Norm.LINF,
        n_queries: int = 5000,
        n_restarts: int = 1,
        p_init: float = 0.8,
        rescale_schedule: bool = True,
    ) -> None:
        self.eps = eps
        self.norm = Norm(norm)
        self.n_queries = n_queries
        self.n_restarts = n_restarts
        self.p_init = p_init
        self.rescale_schedule = rescale_schedule

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, self.eps)

    def _build(self, model: nn.Module, x: Tensor, seed: int) -> Any:
        return torchattacks.Square(
            model,
            norm=torchattacks_norm(self.norm),
            eps=self.eps,
            n_queries=self.n_queries,
            n_restarts=self.n_restarts,
            p_init=self.p_init,
            resc_schedule=self.rescale_schedule,
            seed=seed,
        )
