"""``adv:PATH``: an adversarial dataset written by ``robustlab generate``, read back for evaluation or training.

It reads the uint8 safetensors shards, which hold exactly the pixels of the PNG tree, so evaluating
``--data adv:PATH`` scores the very images whose predictions the manifest records. The folder has
one split: every split name gives the same images, so it can serve as ``--data`` and ``--train-data``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from robustlab.cache import load_weights
from robustlab.data.base import DATASETS
from robustlab.errors import ConfigError, DataError
from robustlab.jsonfile import read_json

__all__ = ["FORMAT", "FORMAT_VERSION", "AdversarialDataset", "load_adversarial"]

FORMAT = "robustlab-adv"
FORMAT_VERSION = 1
_SHARD_KEYS = ("image", "source", "label", "index")


class AdversarialDataset:
    """The stored adversarial images as float ``(C, H, W)`` in ``[0, 1]``, with their labels.

    Attributes:
        manifest: the generation's manifest (config, versions, per-sample records, summary).
        source_indices: index of each image in the source dataset.
        sources: the 8-bit source images the perturbations are measured from, float in ``[0, 1]``.
    """

    def __init__(self, root: Path) -> None:
        if not (root / "manifest.json").is_file():
            raise DataError(f"{root} has no manifest.json: not a finished `robustlab generate` folder")
        fix = "run the same robustlab generate again to rewrite it"
        self.manifest: dict[str, Any] = read_json(root / "manifest.json", what="manifest", fix=fix, kind=dict)
        found = (self.manifest.get("format"), self.manifest.get("format_version"))
        if found != (FORMAT, FORMAT_VERSION):
            raise DataError(f"{root} holds format {found}, this robustlab reads ({FORMAT!r}, {FORMAT_VERSION})")
        names, classes = self.manifest.get("shards"), self.manifest.get("classes")
        if not (isinstance(names, list) and names and isinstance(classes, list) and classes):
            raise DataError(f"manifest {root / 'manifest.json'} lists no shards or classes; {fix}")
        shards = [load_weights(root / str(name)) for name in names]
        _check_hashes(root, names, shards, self.manifest.get("sha256"), fix)
        missing = [
            f"{name} lacks {key!r}"
            for name, shard in zip(names, shards, strict=True)
            for key in _SHARD_KEYS
            if key not in shard
        ]
        if missing:
            raise DataError(f"adversarial dataset {root}: shard {missing[0]}; {fix}")
        self._images = torch.cat([shard["image"] for shard in shards])
        self._sources = torch.cat([shard["source"] for shard in shards])
        self._labels = torch.cat([shard["label"] for shard in shards]).long()
        self.source_indices = torch.cat([shard["index"] for shard in shards]).long()
        self.classes: Sequence[str] = tuple(str(name) for name in classes)
        self.num_classes = len(self.classes)
        self.image_size = int(self._images.shape[-1])
        recorded = self.manifest.get("summary", {}).get("n")
        if recorded != len(self._labels):
            raise DataError(
                f"adversarial dataset {root} holds {len(self._labels)} images but its manifest records {recorded}: "
                f"shards were dropped from or added to manifest.json after generate; {fix}"
            )

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self._images[index].float() / 255, int(self._labels[index])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Images and labels at ``indices``, vectorised."""
        return self._images[indices].float() / 255, self._labels[indices]

    def recorded_victim(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model and the defense whose attack made these images, as the manifest records them."""
        config = self.manifest.get("config", {})
        return config.get("model", {}), config.get("defense", {})

    def provenance(self, model: str, defense: str) -> str:
        """Where the images come from: the attack, its budget, the data and seed, and ``model`` behind ``defense``
        (their labels, :func:`robustlab.diagnostics.sanity.made_by`)."""
        attack, threat = self.manifest.get("attack", {}).get("name"), self.manifest.get("threat", {}).get("describe")
        source = self.manifest.get("source", {})
        behind = "" if defense == "none" else f" behind {defense}"
        return (
            f"adversarial images made by robustlab generate: {attack} at {threat} against {model}{behind}, "
            f"from {source.get('data')} ({source.get('split')} split), seed {self.manifest.get('seed')}"
        )

    def recorded_accuracy(self, indices: Tensor) -> float:
        """The accuracy ``generate`` measured on the stored images of ``indices`` (its model's, behind its defense)."""
        records = self.manifest.get("samples", [])
        hits = [records[i]["adv_pred"] == records[i]["label"] for i in indices.tolist()]
        return sum(hits) / max(len(hits), 1)

    def sources(self, indices: Tensor) -> Tensor:
        """The 8-bit source images of ``indices`` as floats in ``[0, 1]``."""
        return self._sources[indices].float() / 255


def shard_hash(tensors: dict[str, Tensor]) -> str:
    """SHA-256 of a shard's content, as the manifest records it: names, dtypes, shapes and bytes in name order.

    The file's own bytes would not do: safetensors writes its metadata in no fixed order, so a resumed
    generation's shard differs from an uninterrupted one's in its header, never in its tensors.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _check_hashes(root: Path, names: list[Any], shards: list[dict[str, Tensor]], hashes: Any, fix: str) -> None:
    """Every listed shard holds what ``generate`` wrote: a shard edited or replaced since is refused, not read."""
    if not isinstance(hashes, dict):
        raise DataError(f"manifest {root / 'manifest.json'} records no content hashes of its shards; {fix}")
    for name, shard in zip(names, shards, strict=True):
        if hashes.get(str(name)) != shard_hash(shard):
            raise DataError(
                f"shard {root / str(name)} is not what generate wrote (its SHA-256 differs from the manifest's): "
                f"it was edited or replaced; {fix}"
            )


@DATASETS.register("adv", summary="Adversarial dataset written by `robustlab generate` (adv:PATH).")
def load_adversarial(arg: str | None, *, split: str, image_size: int | None) -> AdversarialDataset:
    """The dataset under ``PATH``; the stored size must match the model's (images are never resampled)."""
    if not arg:
        raise ConfigError("adv needs a path: --data adv:PATH (a folder written by robustlab generate)")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(f"adversarial dataset folder {root} does not exist")
    dataset = AdversarialDataset(root)
    if image_size is not None and image_size != dataset.image_size:
        raise ConfigError(
            f"{root} holds {dataset.image_size}px images but the model takes {image_size}px; resampling would "
            f"change the perturbation, so generate the dataset for this model's input size"
        )
    return dataset
