"""Image-quality metrics shared by defenses, tests and reports."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["psnr"]


def psnr(x: Tensor, y: Tensor, *, max_val: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB.

    Per image rather than over the batch so that reports can keep per-sample rows and average in
    dB. The mean squared error is floored at 1e-10, so identical images score 100 dB instead of inf.

    Args:
        x: images ``(B, C, H, W)``, assumed in ``[0, max_val]``.
        y: reference images of the same shape.
        max_val: the peak value of the range.

    Returns:
        ``(B,)`` PSNR values.

    Raises:
        ValueError: the shapes differ.

    Example:
        >>> x = torch.zeros(1, 3, 4, 4)
        >>> round(float(psnr(x, x + 0.1)), 3)
        20.0
    """
    if x.shape != y.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x - y).pow(2).flatten(1).mean(dim=1).clamp(min=1e-10)
    return 10 * torch.log10(max_val**2 / mse)
