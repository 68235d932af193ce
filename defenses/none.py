"""No defense: the bare model."""

from __future__ import annotations

from torch import nn

from robustlab.defense import DEFENSES, Defense

__all__ = ["NoDefense"]


@DEFENSES.register("none", summary="No defense: evaluate the bare model.")
class NoDefense(Defense):
    """The identity defense; transfer and adaptive attacks coincide, so it gets one row per attack."""

    changes_model = False

    def wrap(self, model: nn.Module, *, adaptive: bool = False) -> nn.Module:
        return model
