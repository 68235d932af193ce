"""What the default SmallCNN's training costs, and whether a cheaper recipe gives the same model (issue #23, item 6).

Four parts:

- ``--part cost``: one training step split into rendering the synthetic batch and the forward/backward/optimiser
  step, in plain and channels-last memory layout, in float32 and in bfloat16 autocast.
- ``--part allocator``: the same training in a fresh process under each of glibc's malloc settings that
  robustlab's commands have used (:mod:`robustlab.allocator`): wall and CPU seconds and page faults per step.
- ``--part robust-precision``: the ``synth-at`` robust model (standard training, then PGD adversarial
  fine-tuning) trained in bfloat16 and in float32 for each seed: clean accuracy (2000 test samples) and PGD-10
  at 4 and 8/255 (the first 512).
- ``--part recipes``: trains the default architecture under each ``STEPS:LR:BATCH`` recipe for each seed and
  reports clean accuracy (the first 2000 test samples) and PGD-10 robust accuracy at 1, 2 and 4/255 (the first
  256), each with its 95% Wilson interval. The default recipe (800 steps, lr 2e-3, batch 128) for seed 0 is the
  cached ``--weights synth`` model; every other run trains here without touching the cache. A recipe may end in
  ``:bf16`` or ``:fp32`` (``TrainConfig.bf16``; without it, what this CPU does natively)::

    OMP_NUM_THREADS=1 python experiments/default_recipe.py --part cost
    OMP_NUM_THREADS=2 python experiments/default_recipe.py --part allocator --repeats 3
    OMP_NUM_THREADS=1 python experiments/default_recipe.py --part recipes --seeds 0 1 2 \\
        --recipe 800:0.002:128 --recipe 800:0.002:32 --recipe 300:0.003:128
    OMP_NUM_THREADS=2 python experiments/default_recipe.py --part recipes --seeds 0 1 2 \\
        --recipe 800:0.002:128:bf16 --recipe 800:0.002:128:fp32
    ROBUSTLAB_HOME=$(mktemp -d) OMP_NUM_THREADS=2 python experiments/default_recipe.py --part robust-precision \\
        --seeds 0 1 2

Results and their reading: ``experiments/RESULTS-default-recipe.md``.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.allocator import fix_mmap_threshold, steady_shapes
from robustlab.data.base import iterate_batches
from robustlab.data.synth import SynthConfig, SynthDataset
from robustlab.intervals import with_interval
from robustlab.optimize import descend
from robustlab.train import TrainConfig, _build, train_classifier, trained_classifier

EPS = (1, 2, 4)


def step_cost(steps: int = 25) -> None:
    """Median milliseconds of rendering a batch and of one training step on it, for each memory layout and
    precision (float32, or bfloat16 autocast as ``TrainConfig.bf16`` trains)."""
    config = TrainConfig(arch="smallcnn").resolved()
    data = SynthDataset("train", config=SynthConfig(image_size=32, seed=0))
    generator = torch.Generator().manual_seed(0)
    for bf16 in (False, True):
        for layout in (torch.contiguous_format, torch.channels_last):
            net = _build(config).net.to(memory_format=layout).train()
            optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr)
            render, compute = [], []
            for _ in range(steps):
                started = time.perf_counter()
                chunk = torch.randint(len(data), (config.batch_size,), generator=generator)
                _, x, y = next(iterate_batches(data, chunk, config.batch_size))
                rendered = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(net(x.contiguous(memory_format=layout)), y).float()
                descend(optimizer, loss)
                render.append(rendered - started)
                compute.append(time.perf_counter() - rendered)
            print(
                f"{'bfloat16' if bf16 else 'float32'} {layout}: render {_median_ms(render):.1f} ms/step, "
                f"forward+backward+step {_median_ms(compute):.1f} ms/step",
                flush=True,
            )


ALLOCATORS = {
    "glibc": "glibc's dynamic mmap threshold (a library user's process)",
    "fixed": "threshold fixed at 1 MiB (robustlab's commands before steady_shapes)",
    "steady": "fixed, training under steady_shapes (robustlab's commands now)",
}


def allocator_cost(steps: int, repeats: int) -> None:
    """Train the default model for ``steps`` steps in a fresh process per allocator setting, ``repeats`` times."""
    for _ in range(repeats):
        for name in ALLOCATORS:
            child = ["--part", "allocator-child", "--allocator", name, "--steps", str(steps)]
            run = subprocess.run([sys.executable, __file__, *child], capture_output=True, text=True, check=True)  # noqa: S603
            print(run.stdout.strip(), flush=True)
    print("; ".join(f"{name}: {meaning}" for name, meaning in ALLOCATORS.items()))


def _allocator_child(name: str, steps: int) -> None:
    """The default recipe's training steps (contiguous layout, as ``train_classifier`` takes them) in this process."""
    if name != "glibc":
        fix_mmap_threshold()
    config = TrainConfig(arch="smallcnn").resolved()
    net = _build(config).net.train()
    data = SynthDataset("train", config=SynthConfig(image_size=32, seed=0))
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr)
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with steady_shapes() if name == "steady" else nullcontext():
        for _ in range(steps):
            chunk = torch.randint(len(data), (config.batch_size,), generator=generator)
            _, x, y = next(iterate_batches(data, chunk, config.batch_size))
            descend(optimizer, F.cross_entropy(net(x), y))
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    faults = after.ru_minflt - before.ru_minflt
    print(
        f"{name:>6}: {1000 * wall / steps:.0f} ms/step wall, {1000 * user / steps:.0f} user + "
        f"{1000 * system / steps:.0f} system ms/step, {faults / steps:,.0f} page faults/step ({steps} steps)"
    )


def _median_ms(seconds: list[float]) -> float:
    return 1000 * sorted(seconds[3:])[len(seconds[3:]) // 2]


def pgd_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 10) -> float:
    """PGD-``steps`` L∞ robust accuracy: random start, step eps/4, cross-entropy, seed 0."""
    generator = torch.Generator().manual_seed(0)
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model((x + delta).clamp(0, 1)), y), delta)
        delta = (delta.detach() + eps / 4 * grad.sign()).clamp(-eps, eps)
    with torch.no_grad():
        return float((model((x + delta).clamp(0, 1)).argmax(1) == y).float().mean())


def describe(
    label: str, model: nn.Module, x: Tensor, y: Tensor, n_attacked: int = 256, eps: tuple[int, ...] = EPS
) -> None:
    with torch.no_grad():
        clean = float((torch.cat([model(chunk) for chunk in x.split(500)]).argmax(1) == y).float().mean())
    robust = {e: pgd_accuracy(model, x[:n_attacked], y[:n_attacked], e / 255) for e in eps}
    shown = " | ".join(with_interval(robust[e], n_attacked) or "" for e in eps)
    print(f"| {label} | {with_interval(clean, len(x))} | {shown} |", flush=True)


def recipes(seeds: list[int], specs: list[str]) -> None:
    x, y = SynthDataset("test", config=SynthConfig(image_size=32, seed=0)).get_batch(torch.arange(2000))
    print("| recipe (steps, lr, batch), seed | clean (n=2000) | " + " | ".join(f"PGD-10 {e}/255 (n=256)" for e in EPS))
    base = TrainConfig(arch="smallcnn")
    for seed in seeds:
        for spec in specs:
            steps, lr, batch, *precision = spec.split(":")
            bf16 = {"bf16": True, "fp32": False}[precision[0]] if precision else None
            config = replace(base, steps=int(steps), lr=float(lr), batch_size=int(batch), seed=seed, bf16=bf16)
            if config.resolved() == base.resolved():
                describe(f"{spec} (the cached default), seed {seed}", trained_classifier(base, progress=False), x, y)
                continue
            model = _build(config)
            started = time.perf_counter()
            train_classifier(model, config, progress=False)
            describe(f"{spec}, seed {seed} ({time.perf_counter() - started:.0f} s)", model, x, y)


def robust_precision(seeds: list[int]) -> None:
    """``synth-at`` (PGD-AT fine-tuning of the standard model of the same precision) in bfloat16 and float32.

    Both are trained and cached through ``trained_classifier``: run it with a throw-away ``ROBUSTLAB_HOME``.
    """
    x, y = SynthDataset("test", config=SynthConfig(image_size=32, seed=0)).get_batch(torch.arange(2000))
    print("| precision, seed | clean (n=2000) | PGD-10 4/255 (n=512) | PGD-10 8/255 (n=512) |")
    for seed in seeds:
        for bf16 in (True, False):
            started = time.perf_counter()
            model = trained_classifier(TrainConfig(arch="smallcnn", seed=seed, bf16=bf16), adversarial=True)
            label = f"{'bfloat16' if bf16 else 'float32'}, seed {seed} ({time.perf_counter() - started:.0f} s)"
            describe(label, model, x, y, n_attacked=512, eps=(4, 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part", choices=("cost", "allocator", "allocator-child", "recipes", "robust-precision"), required=True
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipe", action="append", default=[], metavar="STEPS:LR:BATCH[:bf16|:fp32]")
    parser.add_argument("--allocator", choices=tuple(ALLOCATORS), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=100, help="--part allocator: training steps per run")
    parser.add_argument("--repeats", type=int, default=1, help="--part allocator: runs per setting")
    args = parser.parse_args()
    if args.part == "cost":
        step_cost()
    elif args.part == "allocator":
        allocator_cost(args.steps, args.repeats)
    elif args.part == "allocator-child":
        _allocator_child(args.allocator, args.steps)
    elif args.part == "robust-precision":
        robust_precision(args.seeds)
    else:
        recipes(args.seeds, args.recipe or ["800:0.002:128"])


if __name__ == "__main__":
    main()
