"""``--workers``: batches decoded in worker processes are the serial ones, in the same order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustlab.components import ComponentSpec
from robustlab.data import load_dataset
from robustlab.data.base import iterate_batches
from robustlab.evaluate import EvalConfig, Evaluator


def _jpeg_tree(root: Path, per_class: int, sizes: tuple[int, int]) -> None:
    """Class folders of JPEGs of several shapes, so that decoding and resizing both do work."""
    rng = np.random.default_rng(0)
    for label in ("cat", "dog", "owl"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            shape = (sizes[i % 2], sizes[(i + 1) % 2], 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / label / f"{i}.jpg", quality=90)


@pytest.mark.slow  # starts worker processes: seconds on a loaded machine
def test_workers_give_the_serial_batches(tmp_path: Path) -> None:
    _jpeg_tree(tmp_path, per_class=7, sizes=(48, 40))
    dataset = load_dataset(f"imagefolder:{tmp_path}", image_size=32)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    serial = list(iterate_batches(dataset, order, 5))
    parallel = list(iterate_batches(dataset, order, 5, workers=2))
    assert len(serial) == len(parallel) == 5
    for (i0, x0, y0), (i1, x1, y1) in zip(serial, parallel, strict=True):
        assert torch.equal(i0, i1) and torch.equal(x0, x1) and torch.equal(y0, y1)


@pytest.mark.slow  # evaluates the default model, trained in the session
def test_eval_with_workers_equals_serial(trained_model: torch.nn.Module) -> None:
    config = EvalConfig(attacks=(ComponentSpec("pgd", (("steps", 2),)),), n=24, batch_size=8, diagnostics=False)
    serial, parallel = (Evaluator(progress=False, workers=w).run(config) for w in (0, 2))
    assert [row.metric_values() for row in serial.rows] == [row.metric_values() for row in parallel.rows]
    assert [row.robust_acc for row in serial.rows] == [row.robust_acc for row in parallel.rows]
