"""Benchmark FAB-T: robustlab's own loop vs torchattacks' ``FAB`` (robustlab's FAB-T before it) vs the authors'.

On the same samples of ``synth-at`` (the first ``--n`` test samples that survive APGD-CE at the budget,
the ones FAB-T gets inside AutoAttack; with ``--unfiltered``, those the model classifies right), with
AutoAttack's settings (L∞, 9 targets, 100 iterations, one restart), one after the other in one process:

* ``robustlab`` with and without early stop (the two must fool the same samples with the same points);
* ``torchattacks``: ``torchattacks.FAB(multi_targeted=True)`` with the reference's 9 targets, as robustlab ran it;
* ``pyautoattack``: ``FABAttack_PT(targeted=True)``, the reference AutoAttack runs.

Prints per path the seconds, the samples fooled within eps and the work: samples through the classifier,
forward passes that build a graph plus a third of the plain ones, over the samples (exact, immune to a
shared machine's load; untargeted FAB's graph feeds one backward pass per class, counted once).
``--untargeted`` compares the plus version's untargeted FAB (5 restarts) instead. Run from the repository root::

    OMP_NUM_THREADS=1 python experiments/bench_fab.py --n 32
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from collections.abc import Callable

import torch
import torchattacks
from bench_pgd import WORK  # the global forward hook that counts samples through the classifier
from pyautoattack.fab_pt import FABAttack_PT
from robustlab.attacks.autoattack.apgd import APGD
from robustlab.attacks.autoattack.ensemble import FABT
from torch import Tensor, nn

from robustlab.data import load_dataset
from robustlab.models.loading import load_model
from robustlab.threat import Norm, perturbation_norm

PATHS = ["robustlab", "robustlab-no-stop", "torchattacks", "pyautoattack"]


def fooled_within(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, norm: Norm, eps: float) -> Tensor:
    with torch.no_grad():
        return (model(x_adv).argmax(1) != y) & (perturbation_norm(x, x_adv, norm) <= eps + 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="samples that survive APGD-CE")
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--weights", default="synth-at")
    parser.add_argument("--unfiltered", action="store_true", help="every correctly classified sample, no APGD-CE first")
    parser.add_argument("--untargeted", action="store_true", help="the plus version's untargeted FAB, 5 restarts")
    parser.add_argument(
        "--paths", nargs="+", default=["robustlab", "robustlab-no-stop", "torchattacks", "pyautoattack"]
    )
    args = parser.parse_args()
    norm, eps, steps = Norm(args.norm), args.eps, args.steps
    model = load_model("smallcnn", weights=args.weights, progress=False).eval()
    x, y = load_dataset("synth", split="test", image_size=model.input_size).get_batch(torch.arange(8 * args.n))
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    if not args.unfiltered:
        survived = ~fooled_within(model, x, APGD(eps=eps, norm=norm)(model, x, y, early_stop=True), y, norm, eps)
        x, y = x[survived], y[survived]
    x, y = x[: args.n], y[: args.n]
    restarts, targeted = (5, False) if args.untargeted else (1, True)
    print(
        f"smallcnn[{args.weights}], {len(x)} samples "
        f"{'classified right' if args.unfiltered else 'that survive APGD-CE'} "
        f"at {eps:.5f} {norm}, {steps} iterations, "
        f"{'untargeted, 5 restarts' if args.untargeted else '9 targets'}, {torch.get_num_threads()} threads",
        flush=True,
    )
    ta_norm = {Norm.LINF: "Linf", Norm.L2: "L2"}[norm]

    def ours(early_stop: bool) -> Callable[[], Tensor]:
        attack = FABT(eps=eps, norm=norm, steps=steps, n_restarts=restarts, n_target_classes=9, targeted=targeted)
        return lambda: attack(model, x, y, generator=torch.Generator().manual_seed(0), early_stop=early_stop)

    def torchattacks_fab() -> Tensor:
        with torch.random.fork_rng(), contextlib.redirect_stdout(io.StringIO()):
            torch.manual_seed(0)
            attack = torchattacks.FAB(
                model, norm=ta_norm, eps=eps, steps=steps, n_restarts=restarts, multi_targeted=targeted, n_classes=10
            )
            attack.n_target_classes = 9
            return attack(x, y)

    def reference() -> Tensor:
        attack = FABAttack_PT(
            model, norm=ta_norm, n_restarts=restarts, n_iter=steps, eps=eps, targeted=targeted, n_target_classes=9
        )
        return attack.perturb(x, y)

    paths = {"robustlab": ours(True), "robustlab-no-stop": ours(False), "torchattacks": torchattacks_fab}
    paths["pyautoattack"] = reference
    points = {}
    for name in args.paths:
        load = os.getloadavg()[0]
        WORK.take()
        started = time.perf_counter()
        points[name] = paths[name]()
        seconds = time.perf_counter() - started
        grad, plain = WORK.take()
        fooled = int(fooled_within(model, x, points[name], y, norm, eps).sum())
        work = (grad + plain / 3) / len(x)
        print(
            f"  {name:18s} {seconds:7.1f} s  fooled {fooled:3d} / {len(x)}  work {work:7.1f}  load {load:.1f}",
            flush=True,
        )
    if "robustlab" in points and "robustlab-no-stop" in points:
        print(f"  early stop returns the same points: {torch.equal(points['robustlab'], points['robustlab-no-stop'])}")


if __name__ == "__main__":
    main()
