"""What a model is fed: the input size and the normalization that match the checkpoint.

A checkpoint trained on 32x32 images scores at chance when its images are resized to 224, and one
trained with ImageNet mean/std scores badly under another normalization; neither fails loudly. So the
size is the data's own when every image shares one square size (nothing is resized), the model's
standard size only for generated or mixed-size data, and ``--image-size``/``--mean``/``--std`` say
otherwise. What was used is returned as a one-line note for the report and the console.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import torch

from robustlab.data import register_builtin_datasets
from robustlab.data.base import DATASETS, DataSpec, parse_kwargs
from robustlab.errors import ConfigError
from robustlab.models.classifier import IMAGENET_MEAN, IMAGENET_STD, SYNTH_MEAN, SYNTH_STD, ImageClassifier
from robustlab.models.loading import ModelSpec, load_model
from robustlab.preprocessing import Preprocessing, preprocessing_of

__all__ = ["NORMALIZATION_PRESETS", "input_note", "load_classifier", "native_image_size", "parse_channels"]

NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "synth": (SYNTH_MEAN, SYNTH_STD),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
"""Named normalizations ``--mean``/``--std`` accept instead of three numbers."""


def parse_channels(text: str, *, which: str) -> tuple[float, ...]:
    """``0.485,0.456,0.406``, one number for every channel, or a preset name (``imagenet``, ``synth``, ``none``).

    Example:
        >>> parse_channels("imagenet", which="std")
        (0.229, 0.224, 0.225)
        >>> parse_channels("0.5", which="mean")
        (0.5, 0.5, 0.5)
    """
    preset = NORMALIZATION_PRESETS.get(text.strip().lower())
    if preset is not None:
        return preset[0] if which == "mean" else preset[1]
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or (which == "std" and min(values) <= 0):
        need = "positive numbers" if which == "std" else "numbers"
        raise ConfigError(
            f"--{which} {text!r}: give three comma-separated {need} (one per RGB channel), one for all, "
            f"or a preset: {', '.join(NORMALIZATION_PRESETS)}"
        )
    return values


@functools.lru_cache(maxsize=16)
def native_image_size(data: str) -> int | None:
    """The side of the data's images when they all share one square size, else ``None``.

    ``None`` also for generated data (``synth`` renders at the size it is asked for, unless its
    ``size`` option fixes one) and for datasets whose images are resized anyway. A folder's image
    headers are read once per process (a large folder takes seconds).
    """
    spec = DataSpec.parse(data)
    if spec.name == "synth":
        size = parse_kwargs(spec.arg).get("size")
        return int(size) if size and size.isdigit() else None
    if spec.name == "cifar10":
        return 32
    if spec.name == "imagefolder" and spec.arg:
        return _folder_size(Path(spec.arg).expanduser())
    return None


def _folder_size(root: Path) -> int | None:
    """One square size shared by every image file under ``root`` (headers only), else ``None``."""
    from PIL import Image

    from robustlab.data.images import image_files

    if not root.is_dir():
        return None  # the dataset loader says what is wrong with the path
    sizes: set[tuple[int, int]] = set()
    for path in image_files(root):  # the files the loader reads: each real folder once, symlink loops cut
        try:
            with Image.open(path) as image:
                sizes.add(image.size)
        except (OSError, Image.DecompressionBombError):
            return None  # the loader names the unreadable file when it reaches it
        if len(sizes) > 1:
            return None
    if len(sizes) != 1:
        return None
    width, height = sizes.pop()
    return width if width == height else None


def load_classifier(spec: ModelSpec, data: str, *, progress: bool) -> ImageClassifier:
    """Load ``spec`` fed at the size and normalization that fit ``data`` (see the module docstring).

    The classifier's ``input_size`` is what every dataset of the run is rendered or resized to.
    """
    size = spec.image_size or native_image_size(data)
    model = load_model(
        spec.name, weights=spec.weights, num_classes=spec.num_classes, image_size=size, progress=progress
    )
    if size is not None:
        model.input_size = size
    flags: dict[str, Any] = {"resize": spec.resize, "interpolation": spec.interpolation, "crop_mode": spec.crop_mode}
    given = {key: value for key, value in flags.items() if value is not None}
    if given:
        fed = preprocessing_of(model) or Preprocessing.standard(model.input_size)
        model.preprocessing = dataclasses.replace(fed, **given, source=f"{fed.source} with {', '.join(_flags(given))}")
    for name, values in (("mean", spec.mean), ("std", spec.std)):
        if values is not None:
            buffer = getattr(model, name)
            if buffer.shape[1] != len(values):
                raise ConfigError(f"--{name} has {len(values)} values but {spec.name} takes {buffer.shape[1]} channels")
            setattr(model, name, torch.tensor(values, dtype=buffer.dtype).view(1, -1, 1, 1))
    return model


def _resamples(data: str) -> bool:
    """Whether ``data`` resizes its images (it takes a preprocessing); ``synth`` renders at the size asked for."""
    register_builtin_datasets()
    return "preprocessing" in DATASETS.get(DataSpec.parse(data).name).params()


def _flags(given: dict[str, Any]) -> list[str]:
    return [f"--{key.replace('_', '-')} {value}" for key, value in given.items()]


def input_note(model: ImageClassifier, spec: ModelSpec, data: str) -> str:
    """How ``model`` is fed, in one line: size (and why), resampling (and whose) if the data is resized, mean, std."""
    native = spec.image_size is None and native_image_size(data) is not None
    if spec.image_size is not None:
        why = "--image-size"
    elif native:
        why = "the data's own size, not resized"
    else:
        why = "the model's standard size"
    mean = ", ".join(f"{v:.4g}" for v in model.mean.flatten().tolist())
    std = ", ".join(f"{v:.4g}" for v in model.std.flatten().tolist())
    fed = preprocessing_of(model)
    resampled = f", {fed.describe()}" if fed is not None and not native and _resamples(data) else ""
    return (
        f"{spec.label()} fed {model.input_size}x{model.input_size} images ({why}){resampled}, "
        f"mean ({mean}), std ({std})"
    )
