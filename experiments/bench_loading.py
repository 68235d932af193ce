"""Images/s of ``iterate_batches`` serial vs ``--workers N`` on a generated folder of JPEGs.

Writes ``--count`` JPEGs of ``--size`` px (synthetic-world renders, so that they compress like photographs
rather than noise) into ``--root`` once, then reads them all as the evaluator does (decode, resize to
``--size``, stack), for each worker count, checking that every batch equals the serial one::

    OMP_NUM_THREADS=1 python experiments/bench_loading.py --root /tmp/jpegs --workers 0 1 2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torchvision.transforms.functional import to_pil_image

from robustlab.data import load_dataset
from robustlab.data.base import iterate_batches
from robustlab.data.synth import SynthConfig, SynthDataset


def write_jpegs(root: Path, count: int, size: int) -> None:
    """``count`` JPEGs in 10 class folders, unless ``root`` already holds them."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == count:
        return
    world = SynthDataset("test", config=SynthConfig(image_size=size))
    for start in range(0, count, 100):
        x, y = world.get_batch(torch.arange(start, min(start + 100, count)))
        for offset, (image, label) in enumerate(zip(x, y.tolist(), strict=True)):
            folder = root / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            to_pil_image(image).save(folder / f"{start + offset:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    write_jpegs(args.root, args.count, args.size)
    dataset = load_dataset(f"imagefolder:{args.root}", image_size=args.size)
    indices = torch.arange(len(dataset))
    serial = None
    for workers in args.workers:
        load = os.getloadavg()[0]
        started = time.perf_counter()
        batches = [x for _, x, _ in iterate_batches(dataset, indices, args.batch_size, workers=workers)]
        seconds = time.perf_counter() - started
        serial = serial or batches
        same = all(torch.equal(a, b) for a, b in zip(serial, batches, strict=True))
        print(
            f"workers {workers}: {len(indices) / seconds:7.1f} img/s ({seconds:.1f} s), same as serial: {same}, "
            f"load {load:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
