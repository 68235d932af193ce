"""Benchmark ``autoattack-fast`` against robustlab's AutoAttack-standard and the authors' pyautoattack.

Per model and norm, on the same samples one path after the other (the load average is printed with each):
robust accuracy with its Wilson 95% interval, forward+backward passes per image (exact, counted as in
``bench_autoattack.py``), seconds, and per-sample agreement with robustlab's standard ensemble; every sample
the fast ensemble leaves robust that the standard broke is listed by its index in the test split.
Run from the repository root, one thread (``synth-at`` at n = 256 is about 20 minutes a norm)::

    OMP_NUM_THREADS=1 python experiments/bench_autoattack_fast.py --n 256 --weights synth-at --norms linf l2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

import torch
from bench_autoattack import WORK, Breakdown, _work, robust_mask, run_reference, run_robustlab
from robustlab.attacks.autoattack.fast import AutoAttackFast
from torch import Tensor, nn

from robustlab.data import load_dataset
from robustlab.intervals import wilson_interval
from robustlab.models.loading import load_model

PATHS = {  # standard first: the others are compared with it
    "standard": run_robustlab,
    "fast": functools.partial(run_robustlab, ensemble=AutoAttackFast),
    "pyautoattack": run_reference,
}
EPS = {"linf": 8 / 255, "l2": 0.5}


def measure(path: str, model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace) -> tuple[Tensor, float, float]:
    """``(robust mask, work per image, seconds)`` of one path."""
    WORK.take()
    started = time.perf_counter()
    mask, breakdown = PATHS[path](model, x, y, args)
    seconds = time.perf_counter() - started
    work = _total_work(breakdown) or _work(WORK.take(), len(x))
    return mask, work, seconds


def _total_work(breakdown: Breakdown) -> float:
    return sum(entry.get("work", 0.0) for entry in breakdown.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="test samples (the first n of the split)")
    parser.add_argument("--batch-size", type=int, default=250, help="the reference's default")
    parser.add_argument("--norms", nargs="+", default=list(EPS), choices=list(EPS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--weights", nargs="+", default=["synth", "synth-at"])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--masks", type=Path, help="also write every path's per-sample robust mask to this JSON file")
    parser.add_argument(
        "--standard-from",
        type=Path,
        help="compare with the standard ensemble's masks in this --masks file of an earlier run (its first n samples) "
        "instead of running it again: robustlab draws per sample, so a sample's verdict does not depend on n",
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, n={args.n}", flush=True)
    print("| model | norm, eps | path | robust acc [95% CI] | work/img | seconds | agree with standard | load |")
    print("| --- | --- | --- | --- | ---: | ---: | --- | ---: |")
    saved: dict[str, list[bool]] = {}
    for weights in args.weights:
        model = load_model(args.model, weights=weights, progress=False).to(args.device).eval()
        x, y = load_dataset("synth", split="test", image_size=model.input_size).get_batch(torch.arange(args.n))
        x, y = x.to(args.device), y.to(args.device)
        clean = float(robust_mask(model, x, y).float().mean())
        for norm in args.norms:
            args.norm, args.eps, args.ta_norm = norm, EPS[norm], {"linf": "Linf", "l2": "L2"}[norm]
            masks = _earlier_standard(args, weights, norm)
            unmatched: list[str] = []
            for path in args.paths:
                load = os.getloadavg()[0]
                masks[path], work, seconds = measure(path, model, x, y, args)
                saved[f"{weights} {norm} {path}"] = masks[path].tolist()
                if args.masks:  # after every path, so a stopped run keeps what it measured
                    args.masks.write_text(json.dumps(saved))
                acc = float(masks[path].float().mean())
                low, high = wilson_interval(acc, args.n)
                agree = agreement(masks[path], masks["standard"]) if "standard" in masks else "--"
                unmatched += [path] if "standard" not in masks else []
                print(
                    f"| {args.model} `{weights}` (clean {clean:.3f}) | {norm} {args.eps:.4g} | {path} | "
                    f"{acc:.3f} [{low:.3f}, {high:.3f}] | {work:.1f} | {seconds:.1f} | {agree} | {load:.1f} |",
                    flush=True,
                )
            for path in unmatched if "standard" in masks else []:
                same = agreement(masks[path], masks["standard"])
                print(f"{weights} {norm}: {path}, run before standard, agrees with it on {same}")


def _earlier_standard(args: argparse.Namespace, weights: str, norm: str) -> dict[str, Tensor]:
    """The standard ensemble's mask from ``--standard-from``, when that file has this model and norm."""
    earlier = json.loads(args.standard_from.read_text()) if args.standard_from else {}
    mask = earlier.get(f"{weights} {norm} standard")
    if mask is None or "standard" in args.paths:
        return {}
    if len(mask) < args.n:
        raise SystemExit(f"--standard-from has {len(mask)} samples of {weights} {norm}, fewer than --n {args.n}")
    print(f"{weights} {norm}: standard's masks from {args.standard_from} (first {args.n} of {len(mask)})")
    return {"standard": torch.tensor(mask[: args.n])}


def agreement(mask: Tensor, standard: Tensor) -> str:
    """How many samples get the standard ensemble's verdict, and which ones are robust only under ``mask``'s path."""
    same = int((mask == standard).sum())
    missed = (mask & ~standard).nonzero().flatten().tolist()
    return f"{same}/{len(mask)}" + (f", robust only here: {missed}" if missed else "")


if __name__ == "__main__":
    main()
