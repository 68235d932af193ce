"""What ``robustlab fool`` writes: the images (lossless PNG), a labelled grid, and a JSON summary."""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attack import Attack
from robustlab.cache import atomic_write, config_hash
from robustlab.errors import ConfigError
from robustlab.store import SqliteStore
from robustlab.tasks import confidence_metrics

__all__ = ["GRID_LIMIT", "write_fooling_outputs", "write_run"]

GRID_LIMIT = 100
"""The grid shows at most this many classes (the first ones); every image is written as a file."""


def write_run(
    attack: Attack,
    victim: nn.Module,
    out: Path,
    *,
    seed: int,
    class_names: Sequence[str],
    run: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """:meth:`Fooling.write`: generate, checkpointing the evolved archive in ``out/archive.sqlite``, then write.

    A killed run started again with the same options continues from its last saved generation, and a rerun
    with more ``generations`` extends it: the archive's identity leaves ``generations`` out.
    """
    identity = {key: run.get(key) for key in ("model", "weights", "num_classes")} | {"seed": seed} | attack.config()
    identity.pop("generations")
    out.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(out / "archive.sqlite", config_hash=config_hash(identity), resume=True)
    started = time.perf_counter()
    try:
        result = attack.generate(victim, generator=torch.Generator().manual_seed(seed), store=store, progress=progress)
    finally:
        store.close()
    meta = {key: run.get(key) for key in ("model", "weights")} | {"seed": seed, "device": run.get("device")}
    meta["attack"] = attack.config()
    return write_fooling_outputs(result, out, class_names=class_names, seconds=time.perf_counter() - started, meta=meta)


def write_fooling_outputs(
    result: dict[str, Tensor], out: Path, *, class_names: Sequence[str], seconds: float, meta: dict[str, Any]
) -> dict[str, Any]:
    """Write ``images/NNN-name.png`` (8-bit, lossless), ``grid.png`` and ``fooling.json``; return the JSON.

    Args:
        result: :meth:`Fooling.generate`'s output (``images``, ``target``, ``confidence``, ``queries``,
            ``generation``).
        out: the folder (created if missing).
        class_names: one name per class index.
        seconds: wall time of the run, recorded as ``seconds``.
        meta: anything else to record (model, seed, attack config).
    """
    images, targets = result["images"].detach().cpu(), result["target"].cpu()
    confidence = result["confidence"].detach().cpu()
    if images.shape[0] != len(targets) or len(class_names) < int(targets.max()) + 1:
        raise ConfigError("fooling outputs: images, targets and class names do not line up")
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    classes = []
    for image, target, conf in zip(images, targets.tolist(), confidence.tolist(), strict=True):
        name = class_names[target]
        path = folder / f"{target:03d}-{_safe(name)}.png"
        atomic_write(path, _png(image))
        classes.append({"class": target, "name": name, "confidence": conf, "image": str(path.relative_to(out))})
    atomic_write(
        out / "grid.png", grid_png(images[:GRID_LIMIT], [f"{c['name']}\n{c['confidence']:.4%}" for c in classes])
    )
    queries = int(result["queries"].sum())
    summary = {
        "metrics": confidence_metrics(confidence, queries=queries),
        "generation": int(result["generation"].sum()),
        "queries": queries,
        "seconds": round(seconds, 3),
        "classes": classes,
    } | meta
    atomic_write(out / "fooling.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def grid_png(images: Tensor, titles: Sequence[str]) -> bytes:
    """One tile per image with its title underneath, ten to a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(images.shape[0], 1)
    cols = min(n, 10)
    rows = math.ceil(n / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image.expand(3, -1, -1).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _png(image: Tensor) -> bytes:
    from PIL import Image

    array = (image * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
