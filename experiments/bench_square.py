"""Benchmark Square: robustlab's own loop vs torchattacks.Square vs the authors' pyautoattack SquareAttack.

All three run in one process on the same model, samples and budget (p_init 0.8, schedule rescaled to
``--queries`` as both libraries default to). Per path and norm/eps: robust accuracy re-scored on the
returned points, the wall-clock seconds, the queries (images pushed through the classifier, counted
by a wrapper) and the microseconds per query. The three draw different random numbers, so robust
accuracies agree in law only: with 64 samples, one sample is 1.6 points. ``--linear`` swaps the
classifier for an untrained linear one (labels: its own predictions), which costs next to nothing, so
the time per query is the loops' own overhead. Run from the repository root::

    OMP_NUM_THREADS=1 python experiments/bench_square.py --n 64 --queries 1000
    OMP_NUM_THREADS=1 python experiments/bench_square.py --n 64 --queries 300 --linear --budgets linf:1/255 l2:0.05
    OMP_NUM_THREADS=1 python experiments/bench_square.py --n 128 --first 128 --queries 100 --unrescaled \
        --seeds 0 1 2 3 4 5 --budgets linf:24/255 --paths robustlab reference
"""

from __future__ import annotations

import argparse
import time

import pyautoattack.square
import torch
import torchattacks
from robustlab.attacks.autoattack.square import Square
from torch import Tensor, nn

from robustlab.data import load_dataset
from robustlab.models.loading import load_model


class Counting(nn.Module):
    """Counts the images the wrapped classifier sees."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += len(x)
        out: Tensor = self.model(x)
        return out


NAMES = {"linf": "Linf", "l2": "L2"}


def run(name: str, model: Counting, x: Tensor, y: Tensor, budget: tuple[str, float], args: argparse.Namespace) -> int:
    """Attack with one path; print its line and return the robust samples."""
    (norm, eps), queries, seed, rescale = budget, args.queries, args.seed, not args.unrescaled
    model.images = 0
    started = time.perf_counter()
    if name == "robustlab":
        attack = Square(eps=eps, norm=norm, n_queries=queries, rescale_schedule=rescale)
        x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(seed))
    elif name == "torchattacks":
        with torch.random.fork_rng():
            x_adv = torchattacks.Square(
                model, norm=NAMES[norm], eps=eps, n_queries=queries, seed=seed, resc_schedule=rescale
            )(x, y)
    else:
        reference = pyautoattack.square.SquareAttack(
            model, norm=NAMES[norm], eps=eps, n_queries=queries, seed=seed, resc_schedule=rescale, device=x.device
        )
        with torch.random.fork_rng():
            x_adv = reference.perturb(x, y)
    seconds = time.perf_counter() - started
    spent = model.images
    with torch.no_grad():
        robust = int((model.model(x_adv).argmax(1) == y).sum())
    print(
        f"{name:>12}  {norm} eps={eps:.4f} seed={seed}  robust={robust / len(x):6.1%}  {seconds:7.2f} s  "
        f"queries={spent:7d}  {1e6 * seconds / spent:6.1f} us/query",
        flush=True,
    )
    return robust


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--first", type=int, default=0, help="index of the first test sample")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--unrescaled", action="store_true", help="keep the schedule of 10000 queries (AutoAttack's)")
    parser.add_argument("--paths", nargs="+", default=["robustlab", "torchattacks", "reference"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budgets", nargs="+", default=["linf:8/255", "linf:2/255", "l2:0.5"])
    parser.add_argument("--linear", action="store_true", help="an untrained linear classifier: the loops' overhead")
    args = parser.parse_args()
    x, y = load_dataset("synth", split="test").get_batch(torch.arange(args.first, args.first + args.n))
    if args.linear:
        torch.manual_seed(0)
        classifier = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 10))
        y = classifier(x).argmax(1)
    else:
        classifier = load_model("smallcnn", weights="synth", progress=False)
    model = Counting(classifier).to(args.device).eval()
    x, y = x.to(args.device), y.to(args.device)
    for budget in args.budgets:
        norm, value = budget.split(":")
        numerator, _, denominator = value.partition("/")
        eps = float(numerator) / float(denominator or 1)
        totals = dict.fromkeys(args.paths, 0)
        for seed in args.seeds:
            args.seed = seed
            for name in args.paths:
                totals[name] += run(name, model, x, y, (norm, eps), args)
        if len(args.seeds) > 1:
            print(f"robust samples over {len(args.seeds)} seeds x {args.n}: {totals}")


if __name__ == "__main__":
    main()
