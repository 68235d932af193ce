"""Benchmark PGD-10 L∞ 8/255: plain-loop floor vs torchattacks.PGD vs robustlab's evaluator, plus AutoAttack.

Everything runs in one process on the same model, data and seed, measurements interleaved and repeated
so that a noisy shared machine affects all three alike; the medians and their ratios are printed.

* floor: exactly ``steps`` forward+backward passes over every sample, nothing else (no clean pass,
  no bookkeeping) — what any PGD-10 evaluation must at least spend without early stopping.
* torchattacks: ``torchattacks.PGD`` called by hand on each batch (random start from the global RNG).
* robustlab: ``Evaluator.run`` for the same grid cell, end to end (data, clean pass, attack, scoring).

"work" is the samples pushed through the classifier, in units of the floor's ``steps x n`` forward+backward
passes (a forward without a graph counted as a third): exact and immune to a noisy machine.
The images are rendered once, up front, and served to the evaluator from memory, so no path pays for
rendering the synthetic world inside its timing.

* early-stop bound: the work of the PGD steps if every sample stopped at the first iterate that fools the
  model (read off an untimed floor run). It measures the model, not the code: on a model whose samples
  need k steps to fall, no sound early stop saves more than a factor ``STEPS / k``.

Run from the repository root (about 10 minutes on 2 CPU cores)::

    python experiments/bench_pgd.py --n 1024 --repeats 3

On a GPU, the ResNet-50 224x224 bf16 measurement, on weights trained there on the synthetic world at
224x224 (nothing can be downloaded; random weights would leave 90% of the samples misclassified)::

    robustlab train --model resnet50 --image-size 224 --device cuda --out r50-224.safetensors
    python experiments/bench_pgd.py --model resnet50 --weights r50-224.safetensors --device cuda --amp bf16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch
import torch.nn.functional as F
import torchattacks
from torch import Tensor, nn

from robustlab.components import ComponentSpec, load_builtin_components
from robustlab.data import load_dataset, register_builtin_datasets
from robustlab.data.base import DATASETS, TensorImages
from robustlab.evaluate import EvalConfig, Evaluator
from robustlab.models.loading import ImageClassifier, ModelSpec, load_model

EPS, STEP_SIZE, STEPS = 8 / 255, 2 / 255, 10


def floor_pgd(
    model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator, fooled: list[Tensor] | None = None
) -> Tensor:
    """The plainest PGD-10 loop: random start, then ``STEPS`` forward+backward passes.

    ``fooled`` (untimed runs only) collects, per forward pass, which samples the current iterate fools.
    """
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * EPS
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        if fooled is not None:
            fooled.append(logits.detach().argmax(1) != y)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), y), x_adv)
        x_adv = (x + (x_adv.detach() + STEP_SIZE * grad.sign() - x).clamp(-EPS, EPS)).clamp(0, 1)
    return x_adv.detach()


def early_stop_bound(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, seed: int) -> float:
    """The least work any early-stopping PGD-10 can do on these samples, in units of the floor's passes.

    A sample whose iterate is first misclassified at forward pass ``k`` (1-based) costs ``k`` passes, one
    never fooled before the last update costs ``STEPS``: this is how fragile the model is, not how fast
    the code is. The model's clean mistakes are counted like the others, at one pass.
    """
    generator = torch.Generator().manual_seed(seed)
    passes = 0
    for start in range(0, len(x), batch_size):
        fooled: list[Tensor] = []
        floor_pgd(model, x[start : start + batch_size], y[start : start + batch_size], generator, fooled)
        seen = torch.stack(fooled).float()  # (STEPS, batch)
        first = torch.where(seen.any(0), seen.argmax(0) + 1, torch.full_like(seen[0], STEPS))
        passes += int(first.sum())
    return passes / (STEPS * len(x))


def batched_attack(
    attack: Callable[[Tensor, Tensor], Tensor], model: nn.Module, x: Tensor, y: Tensor, batch_size: int
) -> float:
    """Attack every sample batch by batch; return the robust accuracy over all of them."""
    robust = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        x_adv = attack(xb, yb)
        with torch.inference_mode():
            robust += int((model(x_adv).argmax(1) == yb).sum())
    return robust / len(x)


class _Work:
    """Samples through the classifier, split into passes that build a graph (forward+backward) and passes that do not.

    Counted by a global forward hook, this is the machine-independent cost of a path: on a shared, noisy
    machine it is the number to trust, and images/s the number to sanity-check it with.
    """

    def __init__(self) -> None:
        self.with_grad = 0
        self.without_grad = 0
        nn.modules.module.register_module_forward_hook(self._count)

    def _count(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        if isinstance(module, ImageClassifier):
            if torch.is_grad_enabled():
                self.with_grad += len(args[0])
            else:
                self.without_grad += len(args[0])

    def take(self) -> tuple[int, int]:
        """Counts since the last call."""
        counts = (self.with_grad, self.without_grad)
        self.with_grad = self.without_grad = 0
        return counts


WORK = _Work()


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    """``(seconds, value)`` of one call."""
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def eval_config(
    weights: str, args: argparse.Namespace, attack: ComponentSpec, *, n: int, batch_size: int
) -> EvalConfig:
    """One grid cell of the evaluator: ``attack`` on the benchmark's in-memory images."""
    return EvalConfig(
        models=(ModelSpec(args.model, weights=weights),),
        attacks=(attack,),
        data="rendered",
        n=n,
        batch_size=batch_size,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
    )


def bench_model(weights: str, args: argparse.Namespace) -> dict[str, float]:
    """Time the three PGD-10 paths on one model; return images/s medians, robust accuracies and ratios."""
    model = load_model(args.model, weights=weights, progress=False).to(args.device)
    synth = load_dataset("synth", split="test", image_size=model.input_size)
    x_cpu, y_cpu = synth.get_batch(torch.arange(args.n))
    x, y = x_cpu.to(args.device), y_cpu.to(args.device)
    if "rendered" not in DATASETS:  # the same images for every weights: same architecture, same input size
        DATASETS.register("rendered", summary="benchmark images held in memory")(
            lambda arg, *, split, image_size: TensorImages(x_cpu, y_cpu, classes=synth.classes)
        )
    pgd = ComponentSpec("pgd", (("eps", EPS), ("step_size", STEP_SIZE), ("steps", STEPS)))
    config = eval_config(weights, args, pgd, n=args.n, batch_size=args.batch_size)
    autocast = partial(torch.autocast, x.device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def floor_on(net: nn.Module, images: Tensor) -> Callable[[], float]:
        def run() -> float:
            generator = torch.Generator().manual_seed(args.seed)
            with autocast():
                return batched_attack(lambda a, b: floor_pgd(net, a, b, generator), net, images, y, args.batch_size)

        return run

    def run_torchattacks() -> float:
        torch.manual_seed(args.seed)
        attack = torchattacks.PGD(model, eps=EPS, alpha=STEP_SIZE, steps=STEPS, random_start=True)
        with autocast():
            return batched_attack(attack, model, x, y, args.batch_size)

    def robustlab_on(cfg: EvalConfig) -> Callable[[], float]:
        return lambda: Evaluator(progress=False).run(cfg).rows[0].robust_acc

    runs = {"floor": floor_on(model, x), "torchattacks": run_torchattacks, "robustlab": robustlab_on(config)}
    if args.channels_last:
        # The same memory layout for the floor, so that robustlab's is compared with a floor that has it too.
        nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
        runs["floor-cl"] = floor_on(nhwc, x.contiguous(memory_format=torch.channels_last))
        runs["robustlab-cl"] = robustlab_on(replace(config, channels_last=True))
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    robust: dict[str, float] = {}
    work: dict[str, tuple[int, int]] = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            WORK.take()
            elapsed, robust[name] = timed(fn)
            work[name] = WORK.take()
            seconds[name].append(elapsed)
    result = {f"{name}_img_s": args.n / statistics.median(times) for name, times in seconds.items()}
    # A forward without a graph costs about a third of a forward+backward.
    result.update({f"{name}_work": (grad + plain / 3) / (STEPS * args.n) for name, (grad, plain) in work.items()})
    result.update({f"{name}_robust": value for name, value in robust.items()})
    with torch.inference_mode(), autocast():
        result["clean"] = float((model(x).argmax(1) == y).float().mean())
    with autocast():
        result["bound_work"] = early_stop_bound(model, x, y, args.batch_size, args.seed)
    # With random starts the two draw different noise, so their robust accuracies differ by chance; without
    # one both follow the same trajectory and robustlab's early stop can only lower robust accuracy.
    fixed = torchattacks.PGD(model, eps=EPS, alpha=STEP_SIZE, steps=STEPS, random_start=False)
    result["paired_torchattacks_robust"] = batched_attack(fixed, model, x, y, args.batch_size)
    paired = replace(
        config, attacks=(replace(config.attacks[0], params=(*config.attacks[0].params, ("random_start", False))),)
    )
    result["paired_robustlab_robust"] = Evaluator(progress=False).run(paired).rows[0].robust_acc
    for suffix in ("", "-cl") if args.channels_last else ("",):
        ours = result[f"robustlab{suffix}_img_s"]
        result[f"robustlab{suffix}_vs_torchattacks"] = ours / result["torchattacks_img_s"]
        result[f"robustlab{suffix}_time_vs_floor{suffix}"] = result[f"floor{suffix}_img_s"] / ours
    result["bound_speedup"] = result["torchattacks_work"] / result["bound_work"]
    return result


def bench_autoattack(weights: str, args: argparse.Namespace) -> tuple[float, float]:
    """Seconds per image and robust accuracy of AutoAttack-standard through the evaluator (small n)."""
    autoattack = ComponentSpec("autoattack", (("eps", EPS),))
    config = eval_config(weights, args, autoattack, n=args.autoattack_n, batch_size=args.autoattack_n)
    elapsed, robust = timed(lambda: Evaluator(progress=False).run(config).rows[0].robust_acc)
    return elapsed / args.autoattack_n, robust


def main() -> None:
    """Parse options, run both models, print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024, help="test samples per measurement")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--autoattack-n", type=int, default=32, help="samples for the AutoAttack timing (0: skip)")
    parser.add_argument("--model", default="smallcnn", help="architecture, as for robustlab eval --model")
    parser.add_argument("--weights", nargs="+", default=["synth", "synth-at"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["bf16"], help="bf16 autocast in every path (the floor included)")
    parser.add_argument(
        "--channels-last", action="store_true", help="also time robustlab --channels-last and a channels-last floor"
    )
    args = parser.parse_args()
    load_builtin_components()
    register_builtin_datasets()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, amp {args.amp}, "
        f"n={args.n}, batch {args.batch_size}"
    )
    for weights in args.weights:
        r = bench_model(weights, args)
        print(f"{args.model}[{weights}] clean {r['clean']:.3f}")
        for path in [key.removesuffix("_img_s") for key in r if key.endswith("_img_s")]:
            print(
                f"  {path:13s} {r[f'{path}_img_s']:8.1f} img/s  robust {r[f'{path}_robust']:.3f}  "
                f"work {r[f'{path}_work']:.2f}"
            )
        for key in [key for key in r if "_vs_" in key]:
            print(f"  {key.replace('_', ' ')}: {r[key]:.2f}x")
        print(
            f"  early-stop bound: the PGD steps alone need work {r['bound_work']:.2f} on this model, "
            f"so no early stop beats torchattacks by more than {r['bound_speedup']:.2f}x in work\n"
            f"  without random start: torchattacks robust {r['paired_torchattacks_robust']:.3f}, "
            f"robustlab robust {r['paired_robustlab_robust']:.3f}",
            flush=True,
        )
        if args.autoattack_n:
            per_image, robust = bench_autoattack(weights, args)
            print(
                f"  autoattack-standard {per_image:.3f} s/img  robust {robust:.3f} (n={args.autoattack_n})", flush=True
            )


if __name__ == "__main__":
    main()
