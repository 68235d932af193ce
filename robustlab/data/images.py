"""Reading a class-per-folder image tree safely: each file once, 16-bit images scaled, bombs refused.

torchvision's ``ImageFolder`` follows symlinks without remembering where it has been (a loop turned
2 images into 42 samples), converts a 16-bit grey PNG to RGB by clipping (every pixel white), and lets
PIL's decompression-bomb error escape as a traceback. :class:`TreeImageFolder` keeps its sample order
and labels for ordinary trees and fixes those three.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import has_file_allowed_extension

from robustlab.errors import DataError

__all__ = ["TreeImageFolder", "image_files", "load_rgb", "visible_classes"]

_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""PIL modes of 16-bit grey images (PNG opens them as ``I`` or ``I;16``); scaled to 8 bits, not clipped."""


def load_rgb(path: str) -> Image.Image:
    """An image file as 8-bit RGB; 16-bit grey is scaled by 255/65535 instead of clipped at 255."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in _WIDE_MODES:
                wide = np.asarray(image, dtype=np.float64)
                return Image.fromarray(np.clip(np.round(wide / 257), 0, 255).astype(np.uint8)).convert("RGB")
            return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise DataError(f"image {path} is refused as a decompression bomb ({error})") from None


class TreeImageFolder(ImageFolder):  # type: ignore[misc]  # torchvision ships no type hints
    """``ImageFolder`` that reads with :func:`load_rgb` and visits every real folder at most once."""

    def __init__(self, root: str, transform: Callable[..., Any] | None = None) -> None:
        # Empty class folders are allowed: `robustlab generate` writes one for every class, so that labels
        # are ranks of the full class list even when a small n leaves a class without images.
        super().__init__(root, transform=transform, loader=load_rgb, allow_empty=True)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        """The class folders of ``directory``, hidden ones (``.git``, ``.ipynb_checkpoints``) left out."""
        return visible_classes(directory)

    @staticmethod
    def make_dataset(
        directory: str | Path,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        def valid(path: str) -> bool:
            return is_valid_file(path) if is_valid_file is not None else has_file_allowed_extension(path, extensions)

        classes = sorted(class_to_idx)
        seen = {os.path.realpath(directory), *(os.path.realpath(os.path.join(directory, c)) for c in classes)}
        samples: list[tuple[str, int]] = []
        for name in classes:
            for folder, files in sorted(_walk_once(os.path.join(directory, name), seen)):
                samples += [
                    (path, class_to_idx[name]) for path in (os.path.join(folder, f) for f in files) if valid(path)
                ]
        empty = sorted(set(classes) - _names(samples, class_to_idx))
        if empty and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}")
        return samples


def visible_classes(directory: str | Path) -> tuple[list[str], dict[str, int]]:
    """Sorted class folder names under ``directory`` and their labels, skipping names that start with a dot."""
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"no class folders in {directory}")
    return classes, {name: label for label, name in enumerate(classes)}


def image_files(root: str | Path) -> list[str]:
    """The image files a :class:`TreeImageFolder` over ``root`` would read, in its order (no file opened)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    try:
        _, class_to_idx = visible_classes(root)
    except OSError:
        return []
    samples = TreeImageFolder.make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    return [path for path, _ in samples]


def _walk_once(top: str, seen: set[str]) -> list[tuple[str, list[str]]]:
    """``(folder, sorted files)`` under ``top``, following symlinks but entering no real folder in ``seen`` again."""
    found = []
    for folder, subfolders, files in os.walk(top, followlinks=True):
        fresh = []
        for sub in sorted(name for name in subfolders if not name.startswith(".")):  # .ipynb_checkpoints copies
            real = os.path.realpath(os.path.join(folder, sub))
            if real not in seen:
                seen.add(real)
                fresh.append(sub)
        subfolders[:] = fresh
        found.append((folder, sorted(files)))
    return found


def _names(samples: list[tuple[str, int]], class_to_idx: dict[str, int]) -> set[str]:
    present = {label for _, label in samples}
    return {name for name, label in class_to_idx.items() if label in present}
