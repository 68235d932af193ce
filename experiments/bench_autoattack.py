"""Benchmark AutoAttack-standard: the authors' pyautoattack vs torchattacks.AutoAttack vs robustlab's ``autoattack``.

All three run in one process, on the same model, the same samples and the same budget, one after the
other (a shared machine's load hits them in turn, so the load average is printed with each). Per path:

* images/s: samples over the wall-clock seconds of the whole ensemble;
* robust accuracy: re-scored on the returned points by the model itself;
* work: the samples pushed through the classifier, forward+backward passes plus a third of each plain
  forward, over the samples, i.e. "forward+backward passes per image" (exact, immune to a noisy machine);
* per component: how many samples it broke, and its seconds and work (the reference's read off its log,
  robustlab's measured around each component; torchattacks' ensemble reports no breakdown).

``synth-at`` weights are trained on first use (PGD adversarial fine-tuning, a few minutes; cached).
Run from the repository root (about an hour on 2 CPU cores at the defaults)::

    python experiments/bench_autoattack.py --n 64 --weights synth synth-at
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyautoattack
import torch
import torchattacks
from bench_pgd import WORK  # the global forward hook that counts samples through the classifier
from robustlab.attacks.autoattack._apgd import RowLoopAttack
from robustlab.attacks.autoattack.ensemble import AutoAttack
from torch import Tensor, nn

from robustlab.attack import Attack, CallContext
from robustlab.data import load_dataset
from robustlab.models.loading import load_model
from robustlab.threat import ThreatModel

Breakdown = dict[str, dict[str, float]]
"""component -> broken / seconds / work."""


def _work(counts: tuple[int, int], n: int) -> float:
    grad, plain = counts
    return (grad + plain / 3) / n


def robust_mask(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    """Per sample: still classified correctly on its returned point."""
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


class _ReferenceLog(logging.Handler):
    """Reads pyautoattack's debug log: samples broken per component, and cuts the work counter between them."""

    def __init__(self, n: int) -> None:
        super().__init__(logging.DEBUG)
        self.n, self.started = n, time.perf_counter()
        self.breakdown: Breakdown = defaultdict(dict)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if match := re.match(r"(\S+) - \d+/\d+ - (\d+) out of \d+ successfully perturbed", message):
            entry = self.breakdown[match[1]]
            entry["broken"] = entry.get("broken", 0) + int(match[2])
        elif match := re.match(r"robust accuracy after (\S+):", message):
            now = time.perf_counter()
            entry = self.breakdown[match[1].lower()]
            entry["seconds"], entry["work"] = now - self.started, _work(WORK.take(), self.n)
            self.started = now


def run_reference(model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace) -> tuple[Tensor, Breakdown]:
    reference = pyautoattack.AutoAttack(
        model, norm=args.ta_norm, eps=args.eps, version="standard", seed=args.seed, device=args.device
    )
    handler = _ReferenceLog(len(x))
    logger = logging.getLogger("auto-attack")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        WORK.take()
        x_adv, _ = reference.run_standard_evaluation(x, y, batch_size=args.batch_size)
    finally:
        logger.removeHandler(handler)
    return robust_mask(model, x_adv, y), dict(handler.breakdown)


def run_torchattacks(model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace) -> tuple[Tensor, Breakdown]:
    attack = torchattacks.AutoAttack(model, norm=args.ta_norm, eps=args.eps, version="standard", seed=args.seed)
    x_adv = torch.cat(
        [attack(x[i : i + args.batch_size], y[i : i + args.batch_size]) for i in range(0, len(x), args.batch_size)]
    )
    return robust_mask(model, x_adv, y), {}


@dataclass(kw_only=True, eq=False)
class _Measured(Attack):
    """A component of robustlab's ensemble with its seconds and work recorded (what it computes is unchanged)."""

    early_stopping = True
    per_sample_streams = True  # handed on to the component, which uses them if it can
    inner: Attack
    entry: dict[str, float]
    n: int

    def config(self) -> dict[str, Any]:
        return self.inner.config()

    @property
    def threat(self) -> ThreatModel:
        return self.inner.threat

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        WORK.take()
        started = time.perf_counter()
        x_adv = self.inner(
            model, x, y, generator=context.generator, early_stop=context.early_stop, sample_seeds=context.sample_seeds
        )
        self.entry["seconds"] = self.entry.get("seconds", 0.0) + time.perf_counter() - started
        self.entry["work"] = self.entry.get("work", 0.0) + _work(WORK.take(), self.n)
        return x_adv


def run_robustlab(
    model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace, ensemble: type[AutoAttack] = AutoAttack
) -> tuple[Tensor, Breakdown]:
    """robustlab's ``ensemble`` (standard AutoAttack unless said), each component timed and its work counted."""
    breakdown: Breakdown = defaultdict(dict)

    class Measured(ensemble):  # type: ignore[valid-type,misc]
        def components(self) -> list[tuple[str, Attack]]:
            parts = super().components()
            for _, attack in parts:  # the wrapper hides the loops from AutoAttack: cap their rows as it would
                if isinstance(attack, RowLoopAttack) and args.device != "cpu":
                    attack.max_rows = args.batch_size
            return [(name, _Measured(inner=attack, entry=breakdown[name], n=len(x))) for name, attack in parts]

    attack = Measured(eps=args.eps, norm=args.norm)
    generator = torch.Generator().manual_seed(args.seed)
    x_adv = torch.cat(
        [
            attack(model, x[i : i + args.batch_size], y[i : i + args.batch_size], generator=generator, early_stop=True)
            for i in range(0, len(x), args.batch_size)
        ]
    )
    for name, broken in attack.broken.items():
        breakdown[name]["broken"] = broken
    return robust_mask(model, x_adv, y), dict(breakdown)


PATHS = {"pyautoattack": run_reference, "torchattacks": run_torchattacks, "robustlab": run_robustlab}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="test samples")
    parser.add_argument("--batch-size", type=int, default=250, help="the reference's default")
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--norm", default="linf", choices=["linf", "l2"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--weights", nargs="+", default=["synth", "synth-at"])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    args.ta_norm = {"linf": "Linf", "l2": "L2"}[args.norm]
    print(
        f"torch {torch.__version__}, pyautoattack {pyautoattack.__version__}, torchattacks {torchattacks.__version__}, "
        f"{torch.get_num_threads()} threads, n={args.n}, eps={args.eps:.5f} {args.norm}, batch {args.batch_size}",
        flush=True,
    )
    for weights in args.weights:
        model = load_model(args.model, weights=weights, progress=False).to(args.device).eval()
        x, y = load_dataset("synth", split="test", image_size=model.input_size).get_batch(torch.arange(args.n))
        x, y = x.to(args.device), y.to(args.device)
        print(f"{args.model}[{weights}] clean {float(robust_mask(model, x, y).float().mean()):.3f}", flush=True)
        for path in args.paths:
            load = os.getloadavg()[0]
            WORK.take()
            started = time.perf_counter()
            mask, breakdown = PATHS[path](model, x, y, args)
            robust = float(mask.float().mean())
            seconds = time.perf_counter() - started
            work = sum(entry.get("work", 0.0) for entry in breakdown.values()) or _work(WORK.take(), args.n)
            print(
                f"  {path:13s} {args.n / seconds:7.2f} img/s ({seconds:7.1f} s)  robust {robust:.3f}  "
                f"work {work:7.1f}  load {load:.1f}",
                flush=True,
            )
            for name, entry in breakdown.items():
                parts = [
                    f"{key} {value:.1f}" if isinstance(value, float) else f"{key} {value}"
                    for key, value in entry.items()
                ]
                print(f"      {name:8s} " + ", ".join(parts), flush=True)


if __name__ == "__main__":
    main()
