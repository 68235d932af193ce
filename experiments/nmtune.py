"""NMTune vs linear and MLP probes on noisily pre-trained encoders: ID, OOD and robust accuracy, and spectra.

Chen et al. (ICLR 2024) report that label noise in pre-training hurts out-of-domain transfer, and that
NMTune (a residual MLP on the frozen features with three regularisers) recovers about 1% over an MLP
probe. This reproduces the protocol on the synthetic world:

* pre-training: the embedded ``smallcnn`` trained on shape labels with r of them flipped
  (``--weights synth`` for r = 0, ``synth-noise0.1``, ``synth-noise0.3``; pre-training seed 0), cached;
* downstream: the features are frozen (queried for two augmented views of each training image);
  heads trained on ``synth:backgrounds=sky+grass+stripes`` (train split, clean labels of ``--task``);
* ID: the test split of the same world; OOD: the test split of ``synth:backgrounds=checker+bricks``
  (the same shapes on backgrounds the heads never saw; the encoder saw them in pre-training);
* methods: LP (``train_head`` linear), MLP (``train_head`` mlp, robustlab's 3-layer probe), MLP-res (the
  paper's "MLP" baseline: NMTune's residual MLP with cross-entropy only) and NMTune (weights 1, 0.04,
  0.001, top-5, 30 epochs);
* robustness of each downstream model on the first ``--n-robust`` ID test images: PGD-10 L∞ white-box
  through encoder and head, and Square (score-based black-box, the API setting the paper assumes);
* spectra: SVE and LSVR of the ID test features each head reads (the frozen features for LP and MLP,
  the tuned ones for MLP-res and NMTune).

Spread is over downstream seeds (views, initialisation, batch order); the pre-trained encoders are one
seed each. Run from the repository root (about 30 minutes on 2 busy CPU cores, pre-training included)::

    python experiments/nmtune.py --out nmtune-results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from robustlab.defenses.nmtune import NMTuneConfig, NMTuned, train_nmtune, view_features
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack
from robustlab.data import ImageDataset, iterate_batches, load_dataset
from robustlab.encoders import ClassifierFeatures, DownstreamModel, Encoder, HeadConfig, train_head
from robustlab.evaluate import load_builtin_components
from robustlab.models import load_model
from robustlab.spectral import spectral_summary

TRAIN_WORLD = "synth:backgrounds=sky+grass+stripes"
OOD_WORLD = "synth:backgrounds=checker+bricks"
METHODS = ("LP", "MLP", "MLP-res", "NMTune")


def _weights(noise: float) -> str:
    return "synth" if noise == 0 else f"synth-noise{noise:g}"


def _encode(encoder: Encoder, dataset: ImageDataset, n: int) -> tuple[Tensor, Tensor]:
    feats, labels = [], []
    for _, x, y in iterate_batches(dataset, torch.arange(min(n, len(dataset))), 256):
        with torch.inference_mode():
            feats.append(encoder(x))
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def _accuracy(classify: Callable[[Tensor], Tensor], features: Tensor, labels: Tensor) -> float:
    with torch.inference_mode():
        return float((classify(features).argmax(1) == labels).float().mean())


def _robust_accuracy(model: nn.Module, attack: Attack, x: Tensor, y: Tensor, seed: int) -> float:
    """Fraction of samples classified correctly before and after ``attack`` (AutoAttack's robust accuracy)."""
    with torch.inference_mode():
        correct = model(x).argmax(1) == y
    x_adv = attack(model, x[correct], y[correct], generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        survived = int((model(x_adv).argmax(1) == y[correct]).sum())
    return survived / len(y)


def run_seed(
    encoder: Encoder,
    data: dict[str, Any],
    args: argparse.Namespace,
    seed: int,
    attacks: dict[str, Attack],
) -> dict[str, dict[str, float]]:
    """Every method's numbers for one downstream seed on one encoder."""
    weak, strong, labels = view_features(
        encoder, data["train"], args.n_train, shift=2, generator=torch.Generator().manual_seed(seed)
    )
    both, both_labels = torch.cat([weak, strong]), torch.cat([labels, labels])
    classes = data["train"].num_classes
    heads: dict[str, tuple[nn.Module, nn.Module]] = {}  # method -> (feature map, head)
    for kind, method in (("linear", "LP"), ("mlp", "MLP")):
        config = HeadConfig(task=args.task, kind=kind, n_train=len(both), seed=seed)
        heads[method] = (nn.Identity(), train_head(both, both_labels, config, classes))
    plain = NMTuneConfig(mse_weight=0.0, cov_weight=0.0, svd_weight=0.0, epochs=args.epochs)
    for method, config in (("MLP-res", plain), ("NMTune", NMTuneConfig(epochs=args.epochs))):
        heads[method] = train_nmtune(weak, strong, labels, classes, config, seed=seed)
    results = {}
    for method, (tuner, head) in heads.items():
        row: dict[str, float] = {}
        for split in ("id", "ood"):
            row[split] = _accuracy(lambda f, tuner=tuner, head=head: head(tuner(f)), *data[f"{split}_features"])
        with torch.inference_mode():
            row |= spectral_summary(tuner(data["id_features"][0]))
        model: nn.Module = (
            DownstreamModel(encoder, head, task=args.task, classes=data["train"].classes)
            if isinstance(tuner, nn.Identity)
            else NMTuned(encoder, tuner, head)  # type: ignore[arg-type]
        )
        for name, attack in attacks.items():
            if name == "square" and seed not in args.square_seeds:
                continue
            row[name] = _robust_accuracy(model, attack, *data["robust"], seed)
        results[method] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--square-seeds", type=int, nargs="*", default=[0], help="seeds that also run Square")
    parser.add_argument("--task", default="shape")
    parser.add_argument("--n-train", type=int, default=4096)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--n-robust", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--eps", type=float, default=2 / 255)
    parser.add_argument("--square-queries", type=int, default=300)
    parser.add_argument("--out", default="nmtune-results.json")
    args = parser.parse_args()
    torch.manual_seed(0)  # entry point: nothing below should draw from it, but make sure
    load_builtin_components()
    attacks: dict[str, Attack] = {
        "pgd": ATTACKS.get("pgd").factory(eps=args.eps, steps=10),
        "square": ATTACKS.get("square").factory(eps=args.eps, n_queries=args.square_queries),
    }
    spec = f"{TRAIN_WORLD},target={args.task}"
    ood_spec = f"{OOD_WORLD},target={args.task}"
    record: dict[str, Any] = {"args": vars(args), "runs": {}}
    started = time.perf_counter()
    for noise in args.noise:
        model = load_model("smallcnn", weights=_weights(noise), progress=True)
        encoder = ClassifierFeatures(model)
        id_test, ood_test = load_dataset(spec, split="test"), load_dataset(ood_spec, split="test")
        data = {
            "train": load_dataset(spec, split="train"),
            "id_features": _encode(encoder, id_test, args.n_test),
            "ood_features": _encode(encoder, ood_test, args.n_test),
            "robust": next(iterate_batches(id_test, torch.arange(args.n_robust), args.n_robust))[1:],
        }
        pretrained = {}
        if args.task == "shape":  # the pre-trained classifier's own head, on clean labels
            x, y = load_dataset("synth", split="test").get_batch(torch.arange(args.n_test))  # type: ignore[attr-defined]
            with torch.inference_mode():
                pretrained["pretrained_test_acc"] = float((model(x).argmax(1) == y).float().mean())
        runs = {seed: run_seed(encoder, data, args, seed, attacks) for seed in args.seeds}
        record["runs"][f"{noise:g}"] = {"pretrained": pretrained, "seeds": runs}
        print(f"noise {noise:g} done at {time.perf_counter() - started:.0f}s", pretrained, flush=True)
        with open(args.out, "w") as handle:
            json.dump(record, handle, indent=1)
    print(table(record))


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def table(record: dict[str, Any]) -> str:
    """Markdown: one row per noise level and method, mean ± std over seeds (accuracies in %)."""
    lines = [
        "| noise | method | ID acc | OOD acc | PGD-10 robust | Square robust | SVE | LSVR |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for noise, run in record["runs"].items():
        seeds = list(run["seeds"].values())
        for method in METHODS:
            rows = [seed[method] for seed in seeds]

            def values(key: str, rows: list[dict[str, float]] = rows) -> list[float]:
                return [row[key] for row in rows if key in row]

            sve, lsvr = values("sve"), values("lsvr")
            lines.append(
                f"| {noise} | {method} | {_cell(values('id'))} | {_cell(values('ood'))} | {_cell(values('pgd'))} | "
                f"{_cell(values('square'))} | {statistics.mean(sve):.3f} | {statistics.mean(lsvr):.4f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
