"""NMTune vs linear and MLP probes on noisily pre-trained encoders: ID, OOD and robust accuracy, and spectra.

Chen et al. (ICLR 2024) report that label noise in pre-training hurts out-of-domain transfer, and that
NMTune (a residual MLP on the frozen features with three regularisers) recovers about 1% over an MLP
probe. This reproduces the protocol on the synthetic world:

* pre-training: the embedded ``smallcnn`` trained on shape labels with r of them flipped, cached
  (the ``--weights synth-noiseR`` recipe, but ``--pretrain-steps`` AdamW steps of batch 128, 300 by
  default: under one epoch of the 50k train split, so the nets cannot memorise the flipped labels;
  the 800-step recipe of the tags did not fit the CPU budget of the recorded run; pre-training seed 0);
* downstream: the features are frozen (queried for two augmented views of each training image);
  heads trained on ``synth:backgrounds=sky+grass+stripes`` (train split, clean labels of each of ``--tasks``);
* ID: the test split of the same world; OOD: the test split of ``synth:backgrounds=checker+bricks``
  (the same shapes on backgrounds the heads never saw; the encoder saw them in pre-training);
* methods: LP (``train_head`` linear), MLP (``train_head`` mlp, robustlab's 3-layer probe), MLP-res (the
  paper's "MLP" baseline: NMTune's residual MLP with cross-entropy only) and NMTune (weights 1, 0.04,
  0.001, top-5, 30 epochs);
* tasks: ``shape`` (the pre-training task, now with clean labels) and ``color`` (a task the encoder was
  never trained for);
* robustness of each downstream model of the first task on the first ``--n-robust`` ID test images
  (``--robust-seeds`` only): PGD-10 L∞ white-box through encoder and head, and Square (score-based
  black-box, the API setting the paper assumes), both at ``--eps`` (2/255);
* spectra: SVE and LSVR of the ID test features each head reads (the frozen features for LP and MLP,
  the tuned ones for MLP-res and NMTune).

Spread is over downstream seeds (views, initialisation, batch order); the pre-trained encoders are one
seed each. Run from the repository root (one process per noise level, as recorded in
``experiments/RESULTS-nmtune.md``)::

    python experiments/nmtune.py --noise 0.3 --out nmtune-0.3.json

Runs split over processes (one per noise level) merge into one table with ``--merge a.json b.json``.
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
from robustlab.data.synth import ATTRIBUTES
from robustlab.encoders import ClassifierFeatures, DownstreamModel, Encoder, HeadConfig, train_head
from robustlab.evaluate import load_builtin_components
from robustlab.spectral import spectral_summary
from robustlab.train import TrainConfig, trained_classifier

TRAIN_WORLD = "synth:backgrounds=sky+grass+stripes"
OOD_WORLD = "synth:backgrounds=checker+bricks"
METHODS = ("LP", "MLP", "MLP-res", "NMTune")


def _encode(encoder: Encoder, dataset: ImageDataset, n: int) -> Tensor:
    feats = []
    for _, x, _ in iterate_batches(dataset, torch.arange(min(n, len(dataset))), 256):
        with torch.inference_mode():
            feats.append(encoder(x))
    return torch.cat(feats)


def _labels(spec: str, task: str, split: str, n: int) -> Tensor:
    """Labels of the first ``n`` samples of ``spec`` by ``task`` (the same images for every task)."""
    dataset = load_dataset(f"{spec},target={task}", split=split)
    return torch.cat([y for _, _, y in iterate_batches(dataset, torch.arange(min(n, len(dataset))), 1024)])


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


def _fit_methods(
    weak: Tensor, strong: Tensor, labels: Tensor, classes: int, task: str, epochs: int, seed: int
) -> dict[str, tuple[nn.Module, nn.Module]]:
    """method -> (feature map, head), all trained on the same two views' frozen features."""
    both, both_labels = torch.cat([weak, strong]), torch.cat([labels, labels])
    heads: dict[str, tuple[nn.Module, nn.Module]] = {}
    for kind, method in (("linear", "LP"), ("mlp", "MLP")):
        config = HeadConfig(task=task, kind=kind, n_train=len(both), seed=seed)
        heads[method] = (nn.Identity(), train_head(both, both_labels, config, classes))
    plain = NMTuneConfig(mse_weight=0.0, cov_weight=0.0, svd_weight=0.0, epochs=epochs)
    for method, config in (("MLP-res", plain), ("NMTune", NMTuneConfig(epochs=epochs))):
        heads[method] = train_nmtune(weak, strong, labels, classes, config, seed=seed)
    return heads


def run_seed(
    encoder: Encoder, data: dict[str, Any], args: argparse.Namespace, seed: int, attacks: dict[str, Attack]
) -> dict[str, dict[str, dict[str, float]]]:
    """task -> method -> numbers, for one downstream seed on one encoder."""
    weak, strong, _ = view_features(
        encoder, data["train"], args.n_train, shift=2, generator=torch.Generator().manual_seed(seed)
    )
    results: dict[str, dict[str, dict[str, float]]] = {}
    for task in args.tasks:
        classes = len(ATTRIBUTES[task])
        heads = _fit_methods(weak, strong, data["labels"][task]["train"], classes, task, args.epochs, seed)
        results[task] = {}
        for method, (tuner, head) in heads.items():
            row: dict[str, float] = {}
            for split in ("id", "ood"):
                row[split] = _accuracy(
                    lambda f, tuner=tuner, head=head: head(tuner(f)), data[split], data["labels"][task][split]
                )
            with torch.inference_mode():
                row |= spectral_summary(tuner(data["id"]))
            if task == args.tasks[0] and seed in args.robust_seeds:
                model: nn.Module = (
                    DownstreamModel(encoder, head, task=task, classes=ATTRIBUTES[task])
                    if isinstance(tuner, nn.Identity)
                    else NMTuned(encoder, tuner, head)  # type: ignore[arg-type]
                )
                x, y = data["robust"]
                for name, attack in attacks.items():
                    row[name] = _robust_accuracy(model, attack, x, y[task], seed)
            results[task][method] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--robust-seeds", type=int, nargs="*", default=[0], help="seeds that also run the attacks")
    parser.add_argument("--tasks", nargs="+", default=["shape", "color"], help="the first also gets attacked")
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-robust", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--eps", type=float, default=2 / 255)
    parser.add_argument("--square-queries", type=int, default=200)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--out", default="nmtune-results.json")
    parser.add_argument("--merge", nargs="+", help="only print the table of these result files, merged")
    args = parser.parse_args()
    if args.merge:
        merged: dict[str, Any] = {"runs": {}}
        for path in args.merge:
            with open(path) as handle:
                merged["runs"] |= json.load(handle)["runs"]
        print(table(merged))
        for noise, run in sorted(merged["runs"].items(), key=lambda item: float(item[0])):
            print(f"noise {noise}: pre-trained {run['pretrained']}, seeds {list(run['seeds'])}")
        return
    torch.manual_seed(0)  # entry point: nothing below should draw from it, but make sure
    load_builtin_components()
    attacks: dict[str, Attack] = {
        "pgd": ATTACKS.get("pgd").factory(eps=args.eps, steps=10),
        "square": ATTACKS.get("square").factory(eps=args.eps, n_queries=args.square_queries),
    }
    labels = {
        task: {
            "train": _labels(TRAIN_WORLD, task, "train", args.n_train),
            "id": _labels(TRAIN_WORLD, task, "test", args.n_test),
            "ood": _labels(OOD_WORLD, task, "test", args.n_test),
        }
        for task in args.tasks
    }
    id_test = load_dataset(TRAIN_WORLD, split="test")
    x_robust, _ = id_test.get_batch(torch.arange(args.n_robust))  # type: ignore[attr-defined]
    y_robust = {task: labels[task]["id"][: args.n_robust] for task in args.tasks}
    record: dict[str, Any] = {"args": vars(args), "runs": {}}
    started = time.perf_counter()
    for noise in args.noise:
        config = TrainConfig(arch="smallcnn", steps=args.pretrain_steps, label_noise=noise)
        model = trained_classifier(config, progress=True)
        encoder = ClassifierFeatures(model)
        data = {
            "train": load_dataset(TRAIN_WORLD, split="train"),
            "id": _encode(encoder, id_test, args.n_test),
            "ood": _encode(encoder, load_dataset(OOD_WORLD, split="test"), args.n_test),
            "labels": labels,
            "robust": (x_robust, y_robust),
        }
        x, y = load_dataset("synth", split="test").get_batch(torch.arange(args.n_test))  # type: ignore[attr-defined]
        with torch.inference_mode():  # the pre-trained classifier's own head, on the clean shape labels
            pretrained = {"pretrained_test_acc": float((model(x).argmax(1) == y).float().mean())}
        runs: dict[int, Any] = {}
        record["runs"][f"{noise:g}"] = {"pretrained": pretrained, "seeds": runs}
        for seed in args.seeds:  # written after every seed, so an interrupted run still leaves a table
            runs[seed] = run_seed(encoder, data, args, seed, attacks)
            print(f"noise {noise:g} seed {seed} at {time.perf_counter() - started:.0f}s", pretrained, flush=True)
            with open(args.out, "w") as handle:
                json.dump(record, handle, indent=1)
    print(table(record))


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def table(record: dict[str, Any]) -> str:
    """Markdown: one row per task, noise level and method, mean ± std over seeds (accuracies in %)."""
    lines = [
        "| task | noise | method | ID acc | OOD acc | PGD-10 robust | Square robust | SVE | LSVR |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    runs = record["runs"]
    tasks = next(iter(next(iter(runs.values()))["seeds"].values())).keys()
    for task in tasks:
        for noise, run in sorted(runs.items(), key=lambda item: float(item[0])):
            for method in METHODS:
                rows = [seed[task][method] for seed in run["seeds"].values()]

                def values(key: str, rows: list[dict[str, float]] = rows) -> list[float]:
                    return [row[key] for row in rows if key in row]

                lines.append(
                    f"| {task} | {noise} | {method} | {_cell(values('id'))} | {_cell(values('ood'))} | "
                    f"{_cell(values('pgd'))} | {_cell(values('square'))} | {statistics.mean(values('sve')):.3f} | "
                    f"{statistics.mean(values('lsvr')):.4f} |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
