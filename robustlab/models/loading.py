"""Models by name: the torchvision zoo, small embedded nets, and user factories.

:func:`load_model` always returns an :class:`ImageClassifier` in eval mode with frozen parameters.
The classifier owns normalization (mean/std buffers), so everything outside it speaks ``[0, 1]``
pixels and an ``eps`` of 8/255 means the same thing for every model.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import sys
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.errors import ConfigError, UnknownNameError, WeightsUnavailableError
from robustlab.models.checkpoints import load_state_dict_file, load_strict
from robustlab.models.classifier import IMAGENET_MEAN, IMAGENET_STD, MODELS, SYNTH_MEAN, SYNTH_STD, ImageClassifier
from robustlab.models.source import ModelSource
from robustlab.preprocessing import Preprocessing
from robustlab.seeding import global_rng_seeded
from robustlab.train import TrainConfig, robust_recipe, trained_classifier

__all__ = [
    "MODELS",
    "ImageClassifier",
    "ModelSpec",
    "check_logits",
    "default_weights",
    "load_model",
    "torchvision_preprocessing",
]


@dataclass(frozen=True)
class ModelSpec(ModelSource):
    """What the CLI asks for: an architecture (or ``module:factory``) and its :class:`ModelSource` (weights, class
    count, how it is fed), given by keyword."""

    name: str

    def label(self) -> str:
        """Short name used in tables and reports: the weights are named unless they are the default ones.

        ``smallcnn`` and ``smallcnn`` with ``--weights synth`` are one model, so they have one label (and row key).
        """
        if self.weights is None or self.weights == default_weights(self.name):
            return self.name
        return f"{self.name}[{Path(self.weights).name}]"


def default_weights(name: str) -> str | None:
    """The weights a registered architecture loads when none are named (``None`` for a user model)."""
    return _default_weights(MODELS.get(name).tags["family"]) if name in MODELS else None


def _default_weights(family: str) -> str:
    return "synth" if family == "embedded" else "imagenet"


def load_model(
    name: str,
    *,
    weights: str | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    progress: bool = True,
) -> ImageClassifier:
    """Build a classifier in eval mode with frozen parameters.

    Args:
        name: a registered architecture (``robustlab list``), ``timm:NAME[.TAG]`` or ``timm:local-dir:DIR``
            (:mod:`robustlab.models.timm`), ``robustbench:NAME[:DATASET/THREAT]``
            (:mod:`robustlab.models.robustbench`), or ``package.module:factory`` for a user model (the factory
            takes no arguments and returns an ``nn.Module`` that accepts ``[0, 1]`` images).
        weights: ``synth`` (trained by robustlab on the synthetic world, cached; the default for embedded
            nets), ``synth-noise0.3`` (the same, on train labels with 30% flipped: noisy pre-training),
            ``imagenet`` or a torchvision tag such as ``IMAGENET1K_V2`` (the default for torchvision nets),
            ``random`` (no training; the same initial weights on every call), or a checkpoint path
            (``.pt``/``.pth`` state dict loaded with ``weights_only=True``, or ``.safetensors``).
        num_classes: output classes; defaults to what the weights define (10 for synth, 1000 for ImageNet).
        image_size: input side length for synth training and for dataset resizing.
        progress: show download/training progress on stderr.

    Raises:
        UnknownNameError: unknown architecture or weights tag.
        WeightsUnavailableError: the weights cannot be downloaded or the file is missing.
        CheckpointMismatchError: the checkpoint does not fit the architecture.
    """
    with global_rng_seeded(0):  # layer inits draw from the global RNG: ``random`` weights are the same every run
        return _load_model(name, weights=weights, num_classes=num_classes, image_size=image_size, progress=progress)


def _load_model(
    name: str, *, weights: str | None, num_classes: int | None, image_size: int | None, progress: bool
) -> ImageClassifier:
    if name.startswith("timm:"):
        from robustlab.models.timm import load_timm_model

        return _finish(load_timm_model(name, weights=weights, num_classes=num_classes, image_size=image_size))
    if name.startswith("robustbench:"):
        from robustlab.models.robustbench import load_robustbench_model

        return _finish(load_robustbench_model(name, weights=weights))
    if ":" in name and name not in MODELS:
        return _load_user_model(name, weights=weights, image_size=image_size)
    entry = MODELS.get(name)
    family = entry.tags["family"]
    weights = weights or _default_weights(family)
    if weights.startswith("synth") and num_classes not in (None, 10):
        raise ConfigError(
            f"--weights {weights} is trained on the synthetic world's 10 classes, not {num_classes}; "
            "for other heads pass --weights PATH or --weights random"
        )
    if weights in ("synth", "synth-at", "synth-trades"):
        config = TrainConfig(arch=name, num_classes=num_classes or 10, image_size=image_size or 32)
        if weights == "synth-trades":
            config = robust_recipe(config, trades_beta=6.0)
        return _finish(trained_classifier(config, adversarial=weights == "synth-at", progress=progress))
    if weights.startswith("synth-noise"):
        noise = _label_noise(weights)
        config = TrainConfig(arch=name, num_classes=num_classes or 10, image_size=image_size or 32, label_noise=noise)
        return _finish(trained_classifier(config, progress=progress))
    if weights == "random":
        size = image_size or (32 if family == "embedded" else 224)
        return _finish(
            _wrap(
                name,
                entry.factory(num_classes=num_classes or _default_classes(family), image_size=size),
                family=family,
                input_size=size,
            )
        )
    if family == "torchvision" and not _looks_like_path(weights):
        return _finish(_load_torchvision_weights(name, weights, num_classes=num_classes, progress=progress))
    return _finish(_load_checkpoint(name, Path(weights), family=family, num_classes=num_classes, image_size=image_size))


def class_names(name: str, weights: str | None, k: int) -> list[str]:
    """Readable names of a model's ``k`` classes: the synthetic world's shapes, ImageNet's categories, else indices."""
    family = MODELS.get(name).tags.get("family") if name in MODELS else None
    if family == "embedded" and weights in (None, "synth", "synth-at", "synth-trades"):
        from robustlab.data.synth import SHAPES

        if k <= len(SHAPES):
            return list(SHAPES[:k])
    if family == "torchvision" and k == 1000:
        import torchvision

        categories = torchvision.models.get_model_weights(name)["DEFAULT"].meta["categories"]
        return [str(c) for c in categories]
    return [str(i) for i in range(k)]


def check_logits(model: ImageClassifier, x: Tensor, *, batch_size: int, data_classes: int, name: str) -> str | None:
    """Forward passes as the attacks will make them: logits ``(batch, classes)`` of a float dtype, on ``x``'s device.

    Batches of 1, 2 and ``batch_size`` images (the first ones of ``x``) are tried: early stop attacks the
    samples left, down to a single image, so a ``squeeze()`` in ``forward`` fails here rather than mid-run.
    A user model's class count is only guessed (its last linear layer), so the data's is what is checked.

    Returns:
        A note when the logits are half precision (they are upcast to float32 for the losses), else ``None``.
    """
    dtypes = set()
    for size in sorted({1, 2, min(batch_size, len(x))}):
        out = _forward(model, x[:size], name)
        if out.ndim != 2 or out.shape[0] != size or out.shape[1] < data_classes:
            one = " (attacks whittle a batch down to one image: keep the batch dimension, no squeeze())"
            raise ConfigError(
                f"model {name} returned shape {tuple(out.shape)} for {size} images; expected logits "
                f"({size}, classes) with at least the data's {data_classes} classes" + (one if size == 1 else "")
            )
        if not out.is_floating_point():
            raise ConfigError(
                f"model {name} returns {out.dtype} logits: attacks need float scores to take gradients; "
                f"return the scores before any argmax or rounding"
            )
        if out.device != x.device:
            raise ConfigError(f"model {name} returns logits on {out.device} for images on {x.device}")
        dtypes.add(out.dtype)
    half = sorted(str(dtype) for dtype in dtypes if dtype in (torch.float16, torch.bfloat16))
    if not half:
        return None
    return (
        f"{name} returns {half[0]} logits: upcast to float32 for every loss (gradients inside the model stay {half[0]})"
    )


def _forward(model: ImageClassifier, x: Tensor, name: str) -> Tensor:
    try:
        with torch.inference_mode():
            out = model.raw_logits(x)
    except Exception as error:  # a user's forward: shape mismatches, asserts, whatever it raises on this batch
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"model {name} fails on images of shape {tuple(x.shape)} from the data: {reason}") from None
    if not isinstance(out, Tensor):
        raise ConfigError(f"model {name} returned {type(out).__name__}, not a tensor of logits (batch, classes)")
    return out


def _label_noise(tag: str) -> float:
    """The flipped fraction in a ``synth-noiseR`` weights tag, R in ``[0, 1)``."""
    try:
        noise = float(tag.removeprefix("synth-noise"))
    except ValueError:
        noise = -1.0
    if not 0.0 <= noise < 1.0:
        raise ConfigError(
            f"weights {tag!r}: expected synth-noiseR with a label-noise fraction R in [0, 1), e.g. synth-noise0.3"
        )
    return noise


def _check_takes_no_arguments(factory: Callable[..., Any], spec: str) -> None:
    """``--model module:name`` calls ``name()``; a factory with required parameters is one line, not a traceback."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to inspect, let the call decide
        return
    required = [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise ConfigError(
            f"user model {spec!r} needs arguments ({', '.join(required)}); --model calls it with none: "
            "give them defaults or point --model at a function that calls it with yours"
        )


def _default_classes(family: str) -> int:
    return 10 if family == "embedded" else 1000


def _wrap(name: str, net: nn.Module, *, family: str, input_size: int) -> ImageClassifier:
    mean, std = (SYNTH_MEAN, SYNTH_STD) if family == "embedded" else (IMAGENET_MEAN, IMAGENET_STD)
    classes = _num_outputs(net)
    return ImageClassifier(net, mean=mean, std=std, num_classes=classes, name=name, input_size=input_size)


def _num_outputs(net: nn.Module) -> int:
    last = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else -1


def _finish(model: ImageClassifier) -> ImageClassifier:
    model.eval()
    model.requires_grad_(False)
    return model


def _looks_like_path(weights: str) -> bool:
    return any(sep in weights for sep in ("/", "\\")) or Path(weights).suffix in (".pt", ".pth", ".bin", ".safetensors")


def _load_torchvision_weights(name: str, tag: str, *, num_classes: int | None, progress: bool) -> ImageClassifier:
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    member = tag.split(".")[-1].upper()
    member = "DEFAULT" if member == "IMAGENET" else member
    try:
        weight = enum[member]
    except KeyError:
        tags = ", ".join(["imagenet", *enum.__members__, "synth", "random"])
        raise UnknownNameError(f"unknown weights {tag!r} for {name}; known: {tags}, or a checkpoint path") from None
    classes = len(weight.meta["categories"])
    if num_classes not in (None, classes):
        raise ConfigError(f"{weight} has {classes} classes, not {num_classes}; pass a checkpoint for other heads")
    said = io.StringIO()  # torch announces a download on stdout, the table's stream: shown only if it worked
    try:
        with contextlib.redirect_stdout(said):
            state = weight.get_state_dict(progress=progress, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise WeightsUnavailableError(
            f"cannot download {weight} ({type(error).__name__}: offline?): fetch {weight.url} on a connected machine "
            f"and pass --weights PATH, or use --weights synth"
        ) from None
    if progress:
        sys.stderr.write(said.getvalue())
    net = torchvision.models.get_model(name, weights=None, num_classes=classes)
    net.load_state_dict(state)
    preprocessing, mean, std = torchvision_preprocessing(weight)
    return ImageClassifier(
        net,
        mean=mean,
        std=std,
        num_classes=classes,
        name=name,
        input_size=preprocessing.size,
        preprocessing=preprocessing,
    )


def torchvision_preprocessing(weight: Any) -> tuple[Preprocessing, tuple[float, ...], tuple[float, ...]]:
    """Resize, crop, interpolation, mean and std of a torchvision weights enum member (nothing downloaded)."""
    transforms = weight.transforms()

    def side(value: Any) -> int:
        return int(value[0] if isinstance(value, (list, tuple)) else value)

    preprocessing = Preprocessing(
        side(transforms.crop_size),
        side(transforms.resize_size),
        interpolation=transforms.interpolation.value,
        source=f"torchvision {weight}",
    )
    return preprocessing, tuple(transforms.mean), tuple(transforms.std)


def _load_checkpoint(
    name: str, path: Path, *, family: str, num_classes: int | None, image_size: int | None
) -> ImageClassifier:
    state = load_state_dict_file(path)
    size = image_size or (32 if family == "embedded" else 224)
    net = MODELS.get(name).factory(num_classes=num_classes or _default_classes(family), image_size=size)
    load_strict(net, state, source=path)
    return _wrap(name, net, family=family, input_size=size)


def _load_user_model(spec: str, *, weights: str | None, image_size: int | None) -> ImageClassifier:
    module_name, _, attr = spec.partition(":")
    try:
        factory: Callable[[], nn.Module] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UnknownNameError(f"cannot load user model {spec!r}: {error}") from None
    _check_takes_no_arguments(factory, spec)
    net = factory()
    if not isinstance(net, nn.Module):
        raise ConfigError(
            f"user model {spec!r} returned {type(net).__name__}; the factory must return a torch nn.Module"
        )
    if weights:
        load_strict(net, load_state_dict_file(Path(weights)), source=Path(weights))
    if isinstance(net, ImageClassifier):
        return _finish(net)
    return _finish(
        ImageClassifier(
            net,
            mean=(0.0,) * 3,
            std=(1.0,) * 3,
            num_classes=_num_outputs(net),
            name=spec,
            input_size=image_size or 32,
        )
    )
