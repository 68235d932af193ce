"""``timm:NAME[.TAG]`` and ``timm:local-dir:DIR``: timm architectures with robustlab's own weight loading.

timm builds the architecture and says how its weights were trained (input size, crop fraction,
interpolation, mean, std); robustlab reads the weights itself (safetensors or
``torch.load(weights_only=True)``) and loads them strictly, because timm's own loader drops a
classifier whose class count differs from its config and leaves a random head. ``--weights hub``
reads the Hugging Face cache only; nothing is downloaded.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from torch import nn

from robustlab.errors import ConfigError, UnknownNameError, WeightsUnavailableError
from robustlab.models.checkpoints import load_state_dict_file, load_strict
from robustlab.models.classifier import ImageClassifier
from robustlab.models.hub_cache import hf_cache_dir, missing_hub_weights, require_cached_timm
from robustlab.preprocessing import INTERPOLATIONS, Preprocessing

__all__ = ["PREFIX", "load_timm_model", "timm_preprocessing"]

PREFIX = "timm:"
_LOCAL = "local-dir:"
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def load_timm_model(
    spec: str, *, weights: str | None, num_classes: int | None, image_size: int | None
) -> ImageClassifier:
    """``spec``: ``timm:NAME[.TAG]`` or ``timm:local-dir:DIR``; ``weights``: a path, ``hub`` (default) or ``random``.

    ``image_size`` (``--image-size`` or the data's own size) replaces the config's input size.
    """
    name = spec.removeprefix(PREFIX)
    local = Path(name.removeprefix(_LOCAL)).expanduser() if name.startswith(_LOCAL) else None
    weights = weights or "hub"
    if local is None and weights == "hub":
        require_cached_timm(name)  # before importing timm: an empty cache fails in the time Python starts
    timm = _import_timm(spec)
    net = _create(timm, name, local, num_classes=num_classes)
    if weights != "random":
        path = _weights_file(net, name, local) if weights == "hub" else Path(weights).expanduser()
        load_strict(net, load_state_dict_file(path), source=path)
    preprocessing, mean, std = timm_preprocessing(timm.data.resolve_model_data_config(net), source=f"timm {name}")
    if image_size is not None:
        preprocessing = preprocessing.at_size(image_size)
    return ImageClassifier(
        net,
        mean=mean,
        std=std,
        num_classes=int(getattr(net, "num_classes", -1)),
        name=spec,
        input_size=preprocessing.size,
        preprocessing=preprocessing,
    )


def timm_preprocessing(
    config: dict[str, Any], *, source: str
) -> tuple[Preprocessing, tuple[float, ...], tuple[float, ...]]:
    """Resize, crop, interpolation, mean and std from timm's data config (``resolve_model_data_config``)."""
    _, height, width = config["input_size"]
    if height != width:
        raise ConfigError(f"{source} takes {height}x{width} inputs; robustlab feeds square images: pass --image-size")
    interpolation = config.get("interpolation") or "bilinear"
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"{source} uses {interpolation!r} interpolation; pass --interpolation")
    crop_mode = config.get("crop_mode") or "center"
    if crop_mode not in ("center", "squash"):
        raise ConfigError(f"{source} uses crop mode {crop_mode!r}, which robustlab does not apply; pass --crop-mode")
    preprocessing = Preprocessing.from_crop_fraction(
        int(height),
        float(config.get("crop_pct") or 0.875),
        interpolation=interpolation,
        crop_mode=crop_mode,
        source=source,
    )
    return preprocessing, tuple(config["mean"]), tuple(config["std"])


def _import_timm(spec: str) -> Any:
    try:
        import timm
        import timm.data
    except ImportError:
        raise ConfigError(f"--model {spec} needs timm: pip install 'robustlab[timm]'") from None
    return timm


def _create(timm: Any, name: str, local: Path | None, *, num_classes: int | None) -> nn.Module:
    """The architecture, randomly initialised (``pretrained=False``: timm loads no weights)."""
    extra = {} if num_classes is None else {"num_classes": num_classes}
    if local is not None:
        if not (local / "config.json").is_file():
            raise WeightsUnavailableError(
                f"timm:local-dir:{local} has no config.json (a folder timm's save_for_hf wrote)"
            )
        target = f"local-dir:{local}"
    else:
        arch = name.partition(".")[0]
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(f"timm has no model {arch!r}{hint}")
        target = name
    try:
        net: nn.Module = timm.create_model(target, pretrained=False, **extra)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"timm cannot build {name}: {reason}") from None
    return net


def _weights_file(net: nn.Module, name: str, local: Path | None) -> Path:
    """The weights file in a local-dir folder, or in the Hugging Face cache for ``--weights hub``."""
    if local is not None:
        found = [local / file for file in _HUB_FILES if (local / file).is_file()]
        if not found:
            raise WeightsUnavailableError(f"timm:local-dir:{local} has none of {', '.join(_HUB_FILES)}")
        return found[0]
    from huggingface_hub import try_to_load_from_cache

    repo = getattr(net, "pretrained_cfg", {}).get("hf_hub_id")
    cached = [try_to_load_from_cache(repo, file, cache_dir=hf_cache_dir()) for file in _HUB_FILES] if repo else []
    for path in cached:
        if isinstance(path, str):
            return Path(path)
    raise WeightsUnavailableError(missing_hub_weights(name, hf_cache_dir()))
