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

Run from the repository root (about 10 minutes on 2 CPU cores)::

    python experiments/bench_pgd.py --n 1024 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
import torchattacks
from torch import Tensor, nn

from robustlab.data import DATASETS, register_builtin_datasets
from robustlab.data.synth import SynthDataset
from robustlab.evaluate import ComponentSpec, EvalConfig, Evaluator, load_builtin_components
from robustlab.models import ImageClassifier, ModelSpec, load_model

EPS, STEP_SIZE, STEPS = 8 / 255, 2 / 255, 10


def floor_pgd(model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
    """The plainest PGD-10 loop: random start, then ``STEPS`` forward+backward passes."""
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * EPS
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = (x + (x_adv.detach() + STEP_SIZE * grad.sign() - x).clamp(-EPS, EPS)).clamp(0, 1)
    return x_adv.detach()


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


class _Rendered:
    """The synthetic test images rendered once, so that no path pays for rendering inside its timing."""

    num_classes = 10

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.x[index], int(self.y[index])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        return self.x[indices], self.y[indices]


def bench_model(weights: str, args: argparse.Namespace) -> dict[str, float]:
    """Time the three PGD-10 paths on one model; return images/s medians, robust accuracies and ratios."""
    model = load_model("smallcnn", weights=weights, progress=False)
    x, y = SynthDataset("test").get_batch(torch.arange(args.n))
    if "rendered" not in DATASETS:
        DATASETS.register("rendered", summary="benchmark images held in memory")(
            lambda arg, *, split, image_size: _Rendered(x, y)
        )
    config = EvalConfig(
        models=(ModelSpec("smallcnn", weights),),
        attacks=(ComponentSpec("pgd", (("eps", EPS), ("step_size", STEP_SIZE), ("steps", STEPS))),),
        data="rendered",
        n=args.n,
        batch_size=args.batch_size,
        seed=args.seed,
    )

    def run_floor() -> float:
        generator = torch.Generator().manual_seed(args.seed)
        return batched_attack(lambda a, b: floor_pgd(model, a, b, generator), model, x, y, args.batch_size)

    def run_torchattacks() -> float:
        torch.manual_seed(args.seed)
        attack = torchattacks.PGD(model, eps=EPS, alpha=STEP_SIZE, steps=STEPS, random_start=True)
        return batched_attack(attack, model, x, y, args.batch_size)

    def run_robustlab() -> float:
        return Evaluator(progress=False).run(config).rows[0].robust_acc

    runs: dict[str, Callable[[], float]] = {
        "floor": run_floor,
        "torchattacks": run_torchattacks,
        "robustlab": run_robustlab,
    }
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
    with torch.inference_mode():
        result["clean"] = float((model(x).argmax(1) == y).float().mean())
    # With random starts the two draw different noise, so their robust accuracies differ by chance; without
    # one both follow the same trajectory and robustlab's early stop can only lower robust accuracy.
    fixed = torchattacks.PGD(model, eps=EPS, alpha=STEP_SIZE, steps=STEPS, random_start=False)
    result["paired_torchattacks_robust"] = batched_attack(fixed, model, x, y, args.batch_size)
    paired = replace(
        config, attacks=(replace(config.attacks[0], params=(*config.attacks[0].params, ("random_start", False))),)
    )
    result["paired_robustlab_robust"] = Evaluator(progress=False).run(paired).rows[0].robust_acc
    result["robustlab_vs_torchattacks"] = result["robustlab_img_s"] / result["torchattacks_img_s"]
    result["floor_vs_robustlab"] = result["floor_img_s"] / result["robustlab_img_s"]
    return result


def bench_autoattack(weights: str, args: argparse.Namespace) -> tuple[float, float]:
    """Seconds per image and robust accuracy of AutoAttack-standard through the evaluator (small n)."""
    config = EvalConfig(
        models=(ModelSpec("smallcnn", weights),),
        attacks=(ComponentSpec("autoattack", (("eps", EPS),)),),
        data="rendered",
        n=args.autoattack_n,
        batch_size=args.autoattack_n,
        seed=args.seed,
    )
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
    parser.add_argument("--weights", nargs="+", default=["synth", "synth-at"])
    args = parser.parse_args()
    load_builtin_components()
    register_builtin_datasets()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, n={args.n}, batch {args.batch_size}")
    for weights in args.weights:
        r = bench_model(weights, args)
        print(
            f"smallcnn[{weights}] clean {r['clean']:.3f}\n"
            f"  floor        {r['floor_img_s']:8.1f} img/s  robust {r['floor_robust']:.3f}  "
            f"work {r['floor_work']:.2f}\n"
            f"  torchattacks {r['torchattacks_img_s']:8.1f} img/s  robust {r['torchattacks_robust']:.3f}  "
            f"work {r['torchattacks_work']:.2f}\n"
            f"  robustlab    {r['robustlab_img_s']:8.1f} img/s  robust {r['robustlab_robust']:.3f}  "
            f"work {r['robustlab_work']:.2f}\n"
            f"  robustlab / torchattacks throughput {r['robustlab_vs_torchattacks']:.2f}x; "
            f"robustlab time / floor time {r['floor_vs_robustlab']:.2f}x\n"
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
