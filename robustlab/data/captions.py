"""Image-caption pairs for training and attacking captioners: the synthetic world, or COCO-style JSON + images.

A caption dataset gives ``images_and_captions(indices) -> (x, captions)`` with ``x`` float ``(B, 3, S, S)`` in
``[0, 1]`` and one reference caption per image. The synthetic world's captions come from its attributes
("a large red star on stripes"); real data reads a COCO captions file (``{"images": [{"id", "file_name"}],
"annotations": [{"image_id", "caption"}]}``, the layout of ``captions_train2014.json`` and of Karpathy's split
files once converted) and takes each image's first caption as its reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.errors import DataError

__all__ = ["CaptionData", "CocoCaptions", "SynthCaptions", "synth_caption_words"]


class CaptionData(Protocol):
    """What captioner training and caption attacks need: images in ``[0, 1]`` with one reference caption each."""

    def __len__(self) -> int: ...

    def images_and_captions(self, indices: Tensor) -> tuple[Tensor, list[str]]: ...


class SynthCaptions:
    """One split of the synthetic world with its template captions.

    Example:
        >>> data = SynthCaptions("test", n=4)
        >>> x, captions = data.images_and_captions(torch.arange(2))
        >>> x.shape, captions[0].split()[0]
        (torch.Size([2, 3, 32, 32]), 'a')
    """

    def __init__(self, split: str = "train", *, image_size: int = 32, seed: int = 0, n: int | None = None) -> None:
        from robustlab.data.synth import SynthConfig, SynthDataset

        self.dataset = SynthDataset(split, config=SynthConfig(image_size=image_size, seed=seed), n=n)

    def __len__(self) -> int:
        return len(self.dataset)

    def images_and_captions(self, indices: Tensor) -> tuple[Tensor, list[str]]:
        """Images and captions of split-local ``indices``."""
        return self.dataset.get_batch(indices)[0], self.dataset.captions(indices)


def synth_caption_words() -> list[str]:
    """Every word a synthetic caption can hold, sorted, so a vocabulary never depends on which samples were seen."""
    from robustlab.data.synth import ATTRIBUTES

    words = {"a", "on"} | {w for key in ("size", "color", "shape", "background") for w in ATTRIBUTES[key]}
    return sorted(words)


class CocoCaptions:
    """COCO-style captions: a JSON annotation file and the folder its ``file_name`` entries are relative to.

    Images are decoded with Pillow, converted to RGB and resized (bilinear, antialiased) to
    ``image_size`` squared, the input side of SAT-style captioners.

    Raises:
        DataError: the file or folder is missing, the JSON is not COCO-style, or it names no captioned image.
    """

    def __init__(self, annotations: str | Path, images: str | Path, *, image_size: int = 224) -> None:
        path, self.root, self.image_size = Path(annotations), Path(images), image_size
        if not path.is_file():
            raise DataError(f"no caption annotation file at {path} (COCO-style JSON: images + annotations)")
        if not self.root.is_dir():
            raise DataError(f"no image folder at {self.root}")
        try:
            document = json.loads(path.read_text())
            files = {int(entry["id"]): str(entry["file_name"]) for entry in document["images"]}
            captions: dict[int, str] = {}
            for entry in document["annotations"]:
                captions.setdefault(int(entry["image_id"]), str(entry["caption"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"{path} is not a COCO-style captions file ({type(error).__name__}: {error})") from None
        self.items = [(files[i], captions[i]) for i in sorted(files) if i in captions]
        if not self.items:
            raise DataError(f"{path} has no image with a caption")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def captions(self) -> list[str]:
        """Every image's reference caption, in index order (to build a vocabulary)."""
        return [text for _, text in self.items]

    def images_and_captions(self, indices: Tensor) -> tuple[Tensor, list[str]]:
        """Decoded, resized images and their first captions."""
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        images, captions = [], []
        for i in indices.tolist():
            name, text = self.items[i]
            try:
                with Image.open(self.root / name) as file:
                    image = pil_to_tensor(file.convert("RGB")).float().div(255)
            except OSError as error:  # missing, truncated and unidentified images are all OSErrors
                raise DataError(f"cannot read image {self.root / name}: {error}") from None
            size = (self.image_size, self.image_size)
            images.append(F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0].clamp(0, 1))
            captions.append(text)
        return torch.stack(images), captions
