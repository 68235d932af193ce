"""``robustbench:NAME[:DATASET/THREAT]``: a RobustBench model-zoo entry, its weights read by robustlab.

The architecture comes from RobustBench's registry (``robustbench.model_zoo``), imported on its own:
the package's ``__init__`` pulls in ``pkg_resources`` (gone from recent setuptools), gdown, pandas
and autoattack, none of which building an architecture needs. The weights are a file robustlab reads
safely (``weights_only=True``) from ``--weights PATH`` or from RobustBench's own layout,
``MODEL_DIR/DATASET/THREAT/NAME.pt`` (``--weights MODEL_DIR``, default ``./models``), so an existing
``./models`` tree works; robustlab downloads nothing. RobustBench models normalize inside, so the
classifier's own mean/std are the identity.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from robustlab.errors import CheckpointMismatchError, ConfigError, UnknownNameError, WeightsUnavailableError
from robustlab.models.checkpoints import load_state_dict_file, load_strict
from robustlab.models.classifier import ImageClassifier
from robustlab.preprocessing import Preprocessing

__all__ = ["DATASET_CLASSES", "PREFIX", "RobustBenchSpec", "expected_checkpoint", "load_robustbench_model"]

PREFIX = "robustbench:"
DEFAULT_MODEL_DIR = Path("models")
DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
THREATS = ("Linf", "L2", "corruptions")
INSTALL = "pip install 'robustlab[robustbench]' && pip install --no-deps robustbench==1.1.1"

_PREPROCESSINGS = {
    # RobustBench's named ImageNet preprocessings (robustbench/data.py), as robustlab applies them
    "Res256Crop224": Preprocessing(224, 256, "bilinear", "center", "RobustBench Res256Crop224"),
    "BicubicRes256Crop224": Preprocessing(224, 256, "bicubic", "center", "RobustBench BicubicRes256Crop224"),
    "Res224": Preprocessing(224, 224, "bilinear", "squash", "RobustBench Res224"),
    "Crop288": Preprocessing(288, None, "bilinear", "center", "RobustBench Crop288"),
}


class RobustBenchSpec:
    """``NAME[:DATASET/THREAT]`` parsed; the dataset and threat default to ``cifar10/Linf``."""

    def __init__(self, spec: str) -> None:
        name, _, scope = spec.removeprefix(PREFIX).partition(":")
        dataset, _, threat = (scope or "cifar10/Linf").partition("/")
        if not name or dataset not in DATASET_CLASSES or threat not in THREATS:
            raise ConfigError(
                f"--model {spec}: expected robustbench:NAME[:DATASET/THREAT] with DATASET one of "
                f"{', '.join(DATASET_CLASSES)} and THREAT one of {', '.join(THREATS)}, e.g. robustbench:Standard"
            )
        self.name, self.dataset, self.threat = name, dataset, threat

    def __str__(self) -> str:
        return f"{self.name} ({self.dataset}/{self.threat})"


def expected_checkpoint(spec: RobustBenchSpec, weights: str | None) -> Path:
    """The file ``--weights`` names, or ``MODEL_DIR/DATASET/THREAT/NAME.pt`` under a model folder."""
    given = Path(weights).expanduser() if weights else DEFAULT_MODEL_DIR
    if given.is_file() or given.suffix in (".pt", ".pth", ".bin", ".safetensors"):
        return given
    return given / spec.dataset / spec.threat / f"{spec.name}.pt"


def load_robustbench_model(spec: str, *, weights: str | None) -> ImageClassifier:
    """Build the registry's architecture and load its checkpoint strictly (see the module docstring)."""
    parsed = RobustBenchSpec(spec)
    entry = _entry(parsed)
    if isinstance(entry.get("gdrive_id"), list):
        raise ConfigError(f"RobustBench {parsed} is an ensemble of several checkpoints, which robustlab cannot load")
    path = expected_checkpoint(parsed, weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"no checkpoint for RobustBench {parsed} at {path} (robustlab never downloads): fetch Google Drive "
            f"file {entry.get('gdrive_id')} to that path on a connected machine, or pass --weights FILE"
        )
    _refuse_html(path)
    net: nn.Module = entry["model"]()
    load_strict(net, _matching_keys(load_state_dict_file(path), net), source=path)
    default = "Res256Crop224" if parsed.dataset == "imagenet" else None
    key = entry.get("preprocessing", default)
    if key is not None and key not in _PREPROCESSINGS:
        raise ConfigError(f"RobustBench {parsed} uses preprocessing {key!r}, which robustlab does not know")
    size = 224 if parsed.dataset == "imagenet" else 32
    preprocessing = _PREPROCESSINGS[key] if key else Preprocessing(size, None, source="RobustBench: none")
    return ImageClassifier(
        net,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        num_classes=DATASET_CLASSES[parsed.dataset],
        name=f"{PREFIX}{parsed.name}",
        input_size=preprocessing.size,
        preprocessing=preprocessing,
    )


def _entry(spec: RobustBenchSpec) -> dict[str, Any]:
    models = _zoo().get(spec.dataset, {}).get(spec.threat, {})
    if spec.name not in models:
        import difflib

        close = difflib.get_close_matches(spec.name, models, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"RobustBench has no model {spec.name!r} for {spec.dataset}/{spec.threat}{hint}")
    entry: dict[str, Any] = models[spec.name]
    return entry


@functools.cache
def _zoo() -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """RobustBench's registry as ``{dataset: {threat: {name: entry}}}``, without running the package's ``__init__``."""
    if "robustbench" not in sys.modules:
        found = importlib.util.find_spec("robustbench")
        if found is None or found.submodule_search_locations is None:
            raise ConfigError(f"robustbench:NAME models need RobustBench's model zoo: {INSTALL}")
        # the bare package: its submodules import, its __init__ does not run
        sys.modules["robustbench"] = importlib.util.module_from_spec(found)
    try:
        with warnings.catch_warnings():  # it imports timm modules by their deprecated paths
            warnings.simplefilter("ignore", FutureWarning)
            zoo = importlib.import_module("robustbench.model_zoo.models").model_dicts
    except ImportError as error:
        raise ConfigError(f"RobustBench's model zoo cannot be imported ({error}): {INSTALL}") from None
    return {dataset.value: {threat.value: dict(models) for threat, models in by.items()} for dataset, by in zoo.items()}


def _refuse_html(path: Path) -> None:
    """A failed Google Drive download leaves an HTML page (quota, virus-scan notice) named like a checkpoint."""
    with path.open("rb") as file:
        head = file.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<meta")):
        raise CheckpointMismatchError(
            f"{path} is an HTML page, not a checkpoint (a download that hit a quota or confirmation page): "
            f"delete it and fetch the file again"
        )


def _matching_keys(state: dict[str, Tensor], net: nn.Module) -> dict[str, Tensor]:
    """The checkpoint's keys as the architecture names them: RobustBench checkpoints differ by a ``model.`` prefix."""
    own = set(net.state_dict())
    bare = {key.removeprefix("model."): value for key, value in state.items()}
    for candidate in (state, bare, {f"model.{key}": value for key, value in bare.items()}):
        if set(candidate) == own:
            return candidate
    return state  # the strict loader names what does not fit
