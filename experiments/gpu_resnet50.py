"""PGD-10 and AutoAttack (standard, fast) on ResNet-50 at 224 px in bf16: robustlab vs the reference and a plain loop.

One command on a CUDA machine, under 10 minutes at the defaults; appends its table to ``--out``::

    python experiments/gpu_resnet50.py --out experiments/RESULTS-gpu.md

Every path runs under bf16 autocast on the same model and images, one after the other. The labels are the
model's own clean predictions, so every sample starts correct whatever the weights (``--weights random``
needs no download; with ``imagenet`` weights already in the torch cache the robust case is timed too).
Work is forward+backward passes per image (a plain forward a third), counted as in ``bench_pgd.py``.
``--device cpu --precision fp32 --n 2 --image-size 32 --model resnet18`` is the check the test suite runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import pyautoattack
import torch
import torch.nn.functional as F
from bench_pgd import WORK
from robustlab.attacks import ATTACKS  # importing the package registers every attack
from torch import Tensor, nn

from robustlab.data import load_dataset
from robustlab.models.loading import load_model

Path_ = Callable[[nn.Module, Tensor, Tensor, argparse.Namespace], Tensor]


def plain_pgd(model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace) -> Tensor:
    """The loop a user writes: 10 signed-gradient steps of eps/4 from a uniform start, projected."""
    generator = torch.Generator(device=x.device).manual_seed(args.seed)
    x_adv = (x + (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * args.eps).clamp(0, 1)
    for _ in range(10):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + args.eps / 4 * grad.sign(), x - args.eps), x + args.eps).clamp(
            0, 1
        )
    return x_adv


def robustlab_attack(name: str, **params: object) -> Path_:
    """A registered robustlab attack, early-stopped as the evaluator runs it."""

    def run(model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace) -> Tensor:
        attack = ATTACKS.get(name).factory(eps=args.eps, **params)
        return attack(model, x, y, generator=torch.Generator().manual_seed(args.seed), early_stop=True)

    return run


def reference_autoattack(model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace) -> Tensor:
    attack = pyautoattack.AutoAttack(
        model, norm="Linf", eps=args.eps, version="standard", seed=args.seed, device=x.device
    )
    x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=args.batch_size)
    return x_adv


PATHS: dict[str, Path_] = {
    "plain PGD-10 loop": plain_pgd,
    "robustlab pgd (10 steps)": robustlab_attack("pgd", steps=10),
    "pyautoattack standard": reference_autoattack,
    "robustlab autoattack": robustlab_attack("autoattack"),
    "robustlab autoattack-fast": robustlab_attack("autoattack-fast"),
}


def measure(
    path: Path_, model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace
) -> tuple[float, float, float]:
    """``(seconds, robust accuracy, work per image)`` of one path (under bf16 autocast unless ``--precision fp32``)."""
    if x.is_cuda:
        torch.cuda.synchronize()
    WORK.take()
    started = time.perf_counter()
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        x_adv = path(model, x, y, args)
    if x.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    grad, plain = WORK.take()
    with torch.no_grad():
        robust = float((model(x_adv).argmax(1) == y).float().mean())
    return seconds, robust, (grad + plain / 3) / len(x)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="random", help="random (no download) or imagenet (from the torch cache)")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="fp32: the CPU check")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--out", type=Path, default=None, help="append the table to this markdown file")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_resnet50: error: no CUDA device (run with --device cpu for the small check)")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    model = load_model(args.model, weights=args.weights, num_classes=1000, image_size=args.image_size, progress=False)
    model = model.to(device).eval()
    x, _ = load_dataset("synth", split="test", image_size=args.image_size).get_batch(torch.arange(args.n))
    x = x.to(device)
    with (
        torch.no_grad(),
        torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"),
    ):
        y = torch.cat([model(x[i : i + args.batch_size]).argmax(1) for i in range(0, len(x), args.batch_size)])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"{args.model} [{args.weights}] at {args.image_size} px, {args.precision}, n={args.n}, L∞ {args.eps:.5f}, "
        f"batch {args.batch_size}, {name}, torch {torch.__version__}",
        "",
        "| path | seconds | img/s | robust acc | work/img |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label in args.paths:
        seconds, robust, work = measure(PATHS[label], model, x, y, args)
        lines.append(f"| {label} | {seconds:.2f} | {args.n / seconds:.1f} | {robust:.3f} | {work:.1f} |")
        print(lines[-1], flush=True)
    if args.out is not None:
        with args.out.open("a") as out:
            out.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
