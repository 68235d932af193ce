"""What every dataset is to robustlab (:class:`ImageDataset`), their registry, specs and batched reading.

Every dataset yields ``(image, label)`` with the image a float ``(C, H, W)`` tensor in ``[0, 1]`` and
exposes ``num_classes`` and ``classes``. A dataset may also offer ``get_batch(indices)`` for fast
vectorised access; :func:`iterate_batches` uses it when present.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from robustlab.errors import ConfigError
from robustlab.registry import Registry

__all__ = [
    "DATASETS",
    "DataSpec",
    "ImageDataset",
    "TensorImages",
    "iterate_batches",
    "load_batches",
    "parse_kwargs",
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


class TensorImages:
    """Images ``x`` (float ``(N, C, H, W)`` in ``[0, 1]``) and labels ``y`` (int64 ``(N,)``) already in memory, as an
    :class:`ImageDataset` (a benchmark's pre-rendered batch, relabelled data, a test's images).

    Example:
        >>> data = TensorImages(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 1, 0]), classes=("a", "b"))
        >>> len(data), data.num_classes, data[2][1], data.get_batch(torch.tensor([1, 3]))[1].tolist()
        (4, 2, 1, [1, 0])
    """

    def __init__(self, x: Tensor, y: Tensor, *, classes: Sequence[str]) -> None:
        self.x, self.y, self.classes = x, y, list(classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.x[index], int(self.y[index])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        return self.x[indices], self.y[indices]


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


def iterate_batches(
    dataset: ImageDataset, indices: Sequence[int] | Tensor, batch_size: int, *, workers: int = 0
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(indices, x, y)`` batches in order, using ``dataset.get_batch`` when available.

    ``workers > 0`` decodes in that many processes, ahead of the caller (:func:`load_batches`)."""
    index = torch.as_tensor(indices, dtype=torch.long)
    chunks = [index[start : start + batch_size] for start in range(0, len(index), batch_size)]
    for chunk, (x, y) in zip(chunks, load_batches(dataset, chunks, workers=workers), strict=True):
        yield chunk, x, y


def load_batches(
    dataset: ImageDataset, chunks: Sequence[Tensor], *, workers: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` of each chunk of indices, in order.

    With ``workers > 0`` the images are read, decoded and resized in that many processes, two batches ahead
    each, while the caller computes on the last one: the same calls on the same indices, so the same tensors
    as serial loading, in the same order.
    """
    if workers <= 0:
        yield from (_load(dataset, chunk) for chunk in chunks)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _Chunks(dataset, chunks), batch_size=None, num_workers=workers, worker_init_fn=_one_thread, prefetch_factor=2
    )
    yield from loader


def _load(dataset: ImageDataset, chunk: Tensor) -> tuple[Tensor, Tensor]:
    get_batch = getattr(dataset, "get_batch", None)
    if get_batch is not None:
        x, y = get_batch(chunk)
        return x, y
    items = [dataset[int(i)] for i in chunk]
    return torch.stack([item[0] for item in items]), torch.tensor([int(item[1]) for item in items], dtype=torch.long)


class _Chunks(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """The batches of a loader: item ``i`` is chunk ``i`` loaded, in a worker process."""

    def __init__(self, dataset: ImageDataset, chunks: Sequence[Tensor]) -> None:
        self.dataset, self.chunks = dataset, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return _load(self.dataset, self.chunks[i])


def _one_thread(worker: int) -> None:
    """A worker decodes; one thread each keeps N workers from oversubscribing the cores the model computes on."""
    torch.set_num_threads(1)
