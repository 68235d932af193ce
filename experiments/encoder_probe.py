"""Probe: what does the SimCLR victim need for every downstream head to reach 0.80 clean accuracy?

Trains one SimCLR encoder (any :class:`robustlab.ssl.SSLConfig`; cached like the heads, so a long run can be
attacked afterwards with ``experiments/advencoder.py --encoder-*``), then AdvEncoder's
MLP heads on its frozen features of the downstream backgrounds (as experiments/advencoder.py: 2048 train images of
stripes/checker/bricks, 512 test images), and prints the training cost and each head's clean accuracy.

    OMP_NUM_THREADS=1 python experiments/encoder_probe.py --width 32 --steps 600
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, fields

import torch

from robustlab.data import load_dataset
from robustlab.data.base import iterate_batches
from robustlab.encoders import HeadConfig, trained_heads
from robustlab.ssl import SSLConfig, trained_simclr

DOWNSTREAM = "synth:backgrounds=stripes+checker+bricks"
TASKS = ("shape", "color", "background", "size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in fields(SSLConfig):
        if field.name != "recipe":
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    parser.add_argument("--n-train-heads", type=int, default=2048)
    parser.add_argument("--n-test", type=int, default=512)
    args = parser.parse_args()
    config = SSLConfig(**{f.name: getattr(args, f.name) for f in fields(SSLConfig) if f.name != "recipe"})
    load = os.getloadavg()[0]
    cpu, wall = time.process_time(), time.perf_counter()
    encoder = trained_simclr(config, progress=False)  # the CPU seconds are ~0 when it was cached
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    heads = trained_heads(
        encoder, [HeadConfig(task=t, data=DOWNSTREAM, n_train=args.n_train_heads) for t in TASKS], progress=False
    )
    accuracies = {}
    for task, model in heads.items():
        test = load_dataset(f"{DOWNSTREAM},target={task}", split="test")
        correct = 0
        for _, x, y in iterate_batches(test, torch.arange(args.n_test), 256):
            with torch.inference_mode():
                correct += int((model(x).argmax(1) == y).sum())
        accuracies[task] = correct / args.n_test
    print({k: v for k, v in asdict(config).items() if v != getattr(SSLConfig(), k)} or "default", end=" | ")
    print(f"train {cpu:.0f} CPU s, {wall:.0f} wall s, load {load:.1f} |", end=" ")
    print(" ".join(f"{t} {a:.3f}" for t, a in accuracies.items()), flush=True)


if __name__ == "__main__":
    main()
