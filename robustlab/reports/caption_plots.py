"""An image grid for caption attacks: clean image, adversarial image, perturbation, and both captions.

Same house style as :func:`robustlab.reports.plots.image_grid_png` (matplotlib Agg, PNG bytes, the perturbation
amplified to the full colour range with its factor printed), with captions in place of class predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
from torch import Tensor

from robustlab.errors import ConfigError
from robustlab.reports.plots import _hwc, _png

__all__ = ["caption_grid_png"]


def caption_grid_png(
    clean: Tensor,
    adversarial: Tensor,
    clean_captions: Sequence[str],
    adv_captions: Sequence[str],
    *,
    goal: str | None = None,
) -> bytes:
    """One row per image: clean with its caption, adversarial with its caption, the amplified perturbation.

    Args:
        clean: ``(N, C, H, W)`` images in ``[0, 1]``.
        adversarial: their adversarial versions, same shape.
        clean_captions: the captioner's captions of ``clean``.
        adv_captions: its captions of ``adversarial``.
        goal: the target caption or keywords, shown in the figure title.

    Example:
        >>> import torch
        >>> png = caption_grid_png(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8) * 0.03, ["a"], ["b"], goal="b")
        >>> png[:4]
        b'\\x89PNG'
    """
    if not len(clean) == len(adversarial) == len(clean_captions) == len(adv_captions):
        raise ConfigError("caption grid: images and captions must have the same count")
    rows = max(len(clean), 1)
    figure, axes = plt.subplots(rows, 3, figsize=(7.2, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for (left, middle, right), x, x_adv, text, adv_text in zip(
        axes, clean, adversarial, clean_captions, adv_captions, strict=False
    ):
        delta = x_adv - x
        peak = float(delta.abs().max())
        scale = 0.5 / peak if peak > 0 else 1.0
        left.imshow(_hwc(x), interpolation="nearest")
        left.set_title(f"clean:\n{text}", fontsize=8)
        middle.imshow(_hwc(x_adv), interpolation="nearest")
        middle.set_title(f"adversarial:\n{adv_text}", fontsize=8, color="tab:red" if adv_text != text else "black")
        right.imshow(_hwc((0.5 + delta * scale).clamp(0, 1)), interpolation="nearest")
        right.set_title(f"perturbation ×{scale:.0f}\n(L∞ {peak * 255:.1f}/255)", fontsize=8)
    if goal is not None:
        figure.suptitle(f"goal: {goal}", fontsize=9)
    figure.tight_layout()
    return _png(figure)
