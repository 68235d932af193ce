"""No attack: robust accuracy equals clean accuracy (a clean-only run)."""

from __future__ import annotations

from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack, CallContext
from robustlab.threat import Norm, ThreatModel

__all__ = ["NoAttack"]


@ATTACKS.register("none", summary="No attack: report clean accuracy only.", stochastic=False)
class NoAttack(Attack):
    """Returns its input: a row that measures clean accuracy through the same pipeline."""

    uses_gradients = False

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(Norm.LINF, 0.0)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        return x.clone()
