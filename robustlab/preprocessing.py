"""How an image of any size becomes a model's input, as its weights were trained.

Clean accuracy drifts from the published one when a checkpoint trained on "resize 232 bilinear, crop
224" is fed "resize 256, crop 224", or bilinear instead of bicubic; nothing fails loudly. So each
loaded classifier carries a :class:`Preprocessing` filled from where its weights came from
(torchvision's weight transforms, timm's data config, a RobustBench entry, or robustlab's standard),
and every resizing dataset applies it. Normalization is not part of it: the classifier owns mean and
std, so attacks see ``[0, 1]`` pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from robustlab.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["CROP_MODES", "INTERPOLATIONS", "Preprocessing", "preprocessing_of"]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
CROP_MODES = ("center", "squash")
"""``center``: the shorter side resized to ``resize``, then a centre crop (torchvision and timm's default);
``squash``: both sides resized to ``resize`` (the aspect ratio is not kept), then a centre crop."""

_STANDARD_CROP = 0.875


@dataclass(frozen=True)
class Preprocessing:
    """Resize, interpolation and centre crop that turn an image into a ``size`` x ``size`` input.

    ``resize`` ``None``: no resize, only the centre crop (RobustBench's ``Crop288``).

    An image already ``size`` x ``size`` is taken as it is (resizing it to crop it back loses detail).
    """

    size: int
    resize: int | None
    interpolation: str = "bilinear"
    crop_mode: str = "center"
    source: str = "robustlab's standard"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation {self.interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}")
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(f"crop mode {self.crop_mode!r}: robustlab applies {', '.join(CROP_MODES)}")
        if self.size <= 0 or (self.resize is not None and self.resize < self.size):
            raise ConfigError(f"resize {self.resize} is smaller than the crop {self.size}")

    @classmethod
    def standard(cls, size: int) -> Preprocessing:
        """robustlab's rule for weights that say nothing: resize to ``size / 0.875`` and crop (none under 64px)."""
        return cls(size, round(size / _STANDARD_CROP) if size >= 64 else size)

    @classmethod
    def from_crop_fraction(
        cls, size: int, crop_fraction: float, *, interpolation: str, crop_mode: str, source: str
    ) -> Preprocessing:
        """timm's convention: the crop is ``crop_fraction`` of the resized side (``floor(size / crop_fraction)``)."""
        if not 0 < crop_fraction <= 1:
            raise ConfigError(f"crop fraction {crop_fraction} is not in (0, 1]")
        return cls(size, math.floor(size / crop_fraction), interpolation, crop_mode, source)

    def at_size(self, size: int) -> Preprocessing:
        """The same recipe for another input side (``--image-size``, the data's own size): the crop fraction is kept."""
        if size == self.size:
            return self
        resize = None if self.resize is None else max(size, round(self.resize * size / self.size))
        return replace(self, size=size, resize=resize)

    def __call__(self, image: Any) -> Tensor:
        """A PIL image as a float ``(C, size, size)`` tensor in ``[0, 1]``."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        if image.size != (self.size, self.size) and self.resize is not None:
            target = [self.resize] if self.crop_mode == "center" else [self.resize, self.resize]
            image = F.resize(image, target, interpolation=InterpolationMode(self.interpolation), antialias=True)
        if image.size != (self.size, self.size):
            image = F.center_crop(image, [self.size, self.size])
        return F.to_tensor(image)

    def describe(self) -> str:
        """``resize 232 bilinear, crop 224 (torchvision ResNet50_Weights.IMAGENET1K_V2)``."""
        how = "resize" if self.crop_mode == "center" else "squash to"
        if self.resize is None:
            return f"crop {self.size} ({self.source})"
        if self.resize == self.size:
            return f"{how} {self.size} {self.interpolation} ({self.source})"
        return f"{how} {self.resize} {self.interpolation}, crop {self.size} ({self.source})"

    def as_dict(self) -> dict[str, Any]:
        """The fields, for the report."""
        return asdict(self)


def preprocessing_of(model: object) -> Preprocessing | None:
    """What ``model`` is fed at its current ``input_size``; ``None`` for a model with no input size."""
    size = getattr(model, "input_size", None)
    if not isinstance(size, int):
        return None
    own = getattr(model, "preprocessing", None)
    return own.at_size(size) if isinstance(own, Preprocessing) else Preprocessing.standard(size)
