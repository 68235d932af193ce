"""Real datasets through torchvision: CIFAR-10 and any class-per-folder tree (ImageNet-val layout).

They load from disk; a missing dataset is a one-line :class:`DataError` saying where it was looked
for and what to do, never a hidden download that hangs offline.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from robustlab.cache import data_dir
from robustlab.data.base import DATASETS, ImageDataset
from robustlab.errors import ConfigError, DataError
from robustlab.preprocessing import Preprocessing

__all__ = ["CheckedImageFolder", "load_cifar10", "load_imagefolder"]


@DATASETS.register("cifar10", summary="CIFAR-10 via torchvision (cifar10:ROOT; downloads when online).")
def load_cifar10(
    arg: str | None, *, split: str, image_size: int | None, preprocessing: Preprocessing | None = None
) -> ImageDataset:
    """CIFAR-10's 10,000 test images (``split=test``) or 50,000 training images, at 32x32 (or resized)."""
    import torchvision

    if split not in ("train", "test"):
        raise ConfigError(f"cifar10 has splits train and test, not {split!r}")
    root = Path(arg) if arg else data_dir()
    size = image_size or 32
    transform = preprocessing.at_size(size) if preprocessing else Preprocessing(size, size, source="cifar10 resize")
    try:
        dataset = torchvision.datasets.CIFAR10(str(root), train=split == "train", transform=transform, download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise DataError(
            f"CIFAR-10 is not under {root} and cannot be downloaded ({type(error).__name__}): put "
            f"cifar-10-batches-py there or pass --data cifar10:ROOT"
        ) from None
    dataset.num_classes = 10
    return dataset


class CheckedImageFolder:
    """``torchvision.datasets.ImageFolder`` whose unreadable files raise a :class:`DataError` naming them."""

    def __init__(self, root: Path, preprocessing: Preprocessing) -> None:
        from robustlab.data.images import TreeImageFolder

        try:
            self._folder = TreeImageFolder(str(root), transform=preprocessing)
        except (FileNotFoundError, OSError) as error:
            raise DataError(f"no images in {root}: {error}") from None
        if not self._folder.samples:
            raise DataError(f"no images in {root}: its class folders {', '.join(self._folder.classes)} are empty")
        self.classes: Sequence[str] = self._folder.classes
        self.num_classes = len(self.classes)
        self.root = root

    @property
    def relative_files(self) -> list[str]:
        """Every sample's path relative to the root, ``/``-separated (what a subset list file names)."""
        return [Path(path).relative_to(self.root).as_posix() for path, _ in self._folder.samples]

    @property
    def targets(self) -> list[int]:
        """Every sample's label, in order, without reading an image (what a stratified subset needs)."""
        return list(self._folder.targets)

    def __len__(self) -> int:
        return len(self._folder)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, _ = self._folder.samples[index]
        try:
            image, label = self._folder[index]
        except OSError as error:  # PIL.UnidentifiedImageError and truncated files are OSErrors
            raise DataError(f"cannot read image {path}: {type(error).__name__}") from None
        return image, label


@DATASETS.register("imagefolder", summary="Class-per-folder image tree, e.g. ImageNet val (imagefolder:PATH).")
def load_imagefolder(
    arg: str | None, *, split: str, image_size: int | None, preprocessing: Preprocessing | None = None
) -> CheckedImageFolder:
    """Images under ``PATH/<class>/*``, resized and centre-cropped as the model's weights were trained."""
    if not arg:
        raise ConfigError("imagefolder needs a path: --data imagefolder:PATH")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    size = image_size or (preprocessing.size if preprocessing else 224)
    return CheckedImageFolder(root, preprocessing.at_size(size) if preprocessing else Preprocessing.standard(size))
