"""Gaussian blur as a corruption: the "human-perceivable" attack of contextual fusion (Akumalla et al., 2020)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kornia.filters import gaussian_blur2d
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack, CallContext
from robustlab.errors import ConfigError
from robustlab.threat import Norm, ThreatModel

__all__ = ["GaussianBlur"]


@ATTACKS.register(
    "blur", summary="Gaussian blur of standard deviation sigma pixels (a corruption, no gradients).", stochastic=False
)
@dataclass(kw_only=True, eq=False)
class GaussianBlur(Attack):
    """Blur every input with a Gaussian of standard deviation ``sigma`` pixels.

    A corruption rather than an adversarial attack: it ignores the model, so transfer and adaptive rows
    are the same and robust accuracy is accuracy on blurred images. The kernel spans ``±3 sigma``
    (``2 * ceil(3 sigma) + 1`` taps) with replicated borders. The filter is a convex combination of
    pixels, so its output stays in ``[0, 1]`` up to float rounding, which the final clamp removes.

    Args:
        sigma: standard deviation in pixels; 0 returns the input unchanged.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 3, 16, 16)
        >>> y = GaussianBlur(sigma=1.5)(nn.Identity().eval(), x, torch.zeros(2, dtype=torch.long))
        >>> y.shape, bool(y.std() < x.std())
        (torch.Size([2, 3, 16, 16]), True)
    """

    uses_gradients = False

    sigma: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ConfigError(f"blur sigma must be a finite number >= 0, got {self.sigma}")
        self.sigma = float(self.sigma)

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(Norm.UNBOUNDED)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        if self.sigma == 0:
            return x.clone()
        size = 2 * math.ceil(3 * self.sigma) + 1
        blurred = gaussian_blur2d(x, (size, size), (self.sigma, self.sigma), border_type="replicate")
        return blurred.clamp(0, 1)
