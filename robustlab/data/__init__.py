"""Datasets by spec string: ``synth[:k=v,...]``, ``cifar10[:ROOT]``, ``imagefolder:PATH``, ``adv:FOLDER``.

:mod:`robustlab.data.base` says what a dataset is; this package adds loading one by its spec, which registers the
built-in datasets first. The datasets' own modules import :mod:`robustlab.data.base`, never this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from robustlab.data.base import DATASETS, DataSpec, ImageDataset

if TYPE_CHECKING:
    from robustlab.preprocessing import Preprocessing

__all__ = ["load_dataset", "register_builtin_datasets"]


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


def register_builtin_datasets() -> None:
    """Import the modules that register the built-in datasets (deferred: they pull in torchvision)."""
    from robustlab.data import adv, real, synth  # noqa: F401
