"""What a model name leaves open, as the CLI and a :class:`~robustlab.models.loading.ModelSpec` both say it.

Imports nothing heavy: the CLI's option objects build on it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelSource"]


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Which weights a model loads, its class count, and how the images its weights saw were prepared.

    ``image_size``, ``mean``, ``std``, ``resize``, ``interpolation`` and ``crop_mode`` override the input size,
    normalization and resampling (:func:`robustlab.inputs.load_classifier`); ``None``: the data's own size and
    what the weights say (robustlab's standard when they say nothing).
    """

    weights: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    interpolation: str | None = None
    crop_mode: str | None = None
