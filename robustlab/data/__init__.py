"""Datasets by spec string: ``synth[:k=v,...]``, ``cifar10[:ROOT]``, ``imagefolder:PATH``.

Every dataset yields ``(image, label)`` with the image a float ``(C, H, W)`` tensor in ``[0, 1]`` and
exposes ``num_classes`` and ``classes``. A dataset may also offer ``get_batch(indices)`` for fast
vectorised access; :func:`iterate_batches` uses it when present.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from robustlab.errors import ConfigError
from robustlab.registry import Registry

if TYPE_CHECKING:
    from robustlab.preprocessing import Preprocessing

__all__ = [
    "DATASETS",
    "DataSpec",
    "ImageDataset",
    "iterate_batches",
    "load_dataset",
    "parse_kwargs",
    "register_builtin_datasets",
]


@runtime_checkable
class ImageDataset(Protocol):
    """What robustlab needs from a dataset."""

    @property
    def num_classes(self) -> int: ...

    @property
    def classes(self) -> Sequence[str]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, int]: ...


DatasetFactory = Callable[..., ImageDataset]
DATASETS: Registry[ImageDataset] = Registry("dataset")


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``name[:arg]`` dataset spec; ``arg`` is a path, a root, or ``k=v,...`` options."""

    name: str
    arg: str | None = None

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        name, sep, arg = text.partition(":")
        if not name:
            raise ConfigError(f"dataset spec {text!r} has no name; expected e.g. synth, cifar10:ROOT, imagefolder:PATH")
        return cls(name.strip(), arg if sep else None)

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"


def parse_kwargs(arg: str | None) -> dict[str, str]:
    """Split ``k=v,k=v`` into a dict of strings (an empty or missing arg gives ``{}``)."""
    if not arg:
        return {}
    out: dict[str, str] = {}
    for item in arg.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"dataset option {item!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


def load_dataset(
    spec: str | DataSpec,
    *,
    split: str = "test",
    image_size: int | None = None,
    preprocessing: Preprocessing | None = None,
) -> ImageDataset:
    """Build the dataset named by ``spec``.

    Args:
        spec: ``synth``, ``synth:size=64,context_p=0.8``, ``cifar10``, ``cifar10:ROOT``, ``imagefolder:PATH``...
        split: ``train``, ``val`` or ``test`` for datasets that have splits.
        image_size: side length the model expects; datasets that can resize use it.
        preprocessing: how the model's weights want other sizes resized and cropped
            (:func:`robustlab.preprocessing.preprocessing_of`), given to the datasets that take it.

    Raises:
        UnknownNameError: no dataset of that name.
        DataError: the data is missing, empty or unreadable.
    """
    register_builtin_datasets()
    parsed = spec if isinstance(spec, DataSpec) else DataSpec.parse(spec)
    entry = DATASETS.get(parsed.name)
    factory: Any = entry.factory
    extra = {"preprocessing": preprocessing} if preprocessing is not None and "preprocessing" in entry.params() else {}
    dataset: ImageDataset = factory(parsed.arg, split=split, image_size=image_size, **extra)
    return dataset


def iterate_batches(
    dataset: ImageDataset, indices: Sequence[int] | Tensor, batch_size: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(indices, x, y)`` batches in order, using ``dataset.get_batch`` when available."""
    index = torch.as_tensor(indices, dtype=torch.long)
    get_batch = getattr(dataset, "get_batch", None)
    for start in range(0, len(index), batch_size):
        chunk = index[start : start + batch_size]
        if get_batch is not None:
            x, y = get_batch(chunk)
        else:
            items = [dataset[int(i)] for i in chunk]
            x = torch.stack([item[0] for item in items])
            y = torch.tensor([int(item[1]) for item in items], dtype=torch.long)
        yield chunk, x, y


def register_builtin_datasets() -> None:
    """Import the modules that register the built-in datasets (deferred: they pull in torchvision)."""
    from robustlab.data import adv, real, synth  # noqa: F401
