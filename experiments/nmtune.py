"""NMTune vs linear and MLP probes on noisily pre-trained encoders, in the converged regime, with ablations.

Chen et al. (ICLR 2024) report that label noise in a *converged* pre-training hurts out-of-domain
transfer, and that NMTune (a residual MLP on the frozen features with three regularisers) recovers
about 1% over an MLP on top. This reproduces the protocol on the synthetic world:

* pre-training: a ``SmallCNN`` (``--width``) trained on the first ``--pretrain-n`` train images of
  ``synth:backgrounds=sky+grass+stripes`` labelled by shape x colour (80 classes), ``r`` of the labels
  flipped to another class, for ``--pretrain-steps`` AdamW steps (the synthetic models' recipe; 2000 steps
  of 128 are 256 epochs, and a width-16 net then fits every noisy label: the fit is recorded); one encoder
  per noise level (``--noise``: 0 is the clean control) and ``--pretrain-seeds`` seed, cached;
* downstream: the features are frozen; ``--views`` augmented views (flip, crop of the 2-px padded
  image) of ``--n-train`` images of the same world's *val* split (images the encoder never saw), and
  every epoch pairs two distinct views per image; clean labels of each of ``--tasks``;
* ID: the same world's test split; OOD: ``synth:backgrounds=checker+bricks`` test split, backgrounds
  that neither pre-training nor the heads ever saw;
* methods: LP and MLP (``train_head`` linear / 3-layer, on every stored view), MLP-res (NMTune's
  residual MLP with cross-entropy only: the paper's "MLP" baseline), NMTune (weights 1, 0.04, 0.001,
  top-5, 30 epochs) and its ablations cov=0, svd=0, mse=0;
* spectra: SVE and LSVR of the ID test features each head reads.

NMTune - MLP-res is paired per (pre-training seed, downstream seed) and summarised as a mean with a
95% t interval over the pairs. Run from the repository root (one process per pre-training seed; merge
with ``--merge``)::

    python experiments/nmtune.py --noise 0.3 --pretrain-seeds 0 --out nmtune-0.json

The tables end with each noisy pre-training minus the clean one, paired the same way, when ``--noise``
includes 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from typing import Any

import torch
from robustlab.defenses.nmtune import NMTuneConfig, train_nmtune, view_features
from torch import Tensor, nn

from robustlab.cache import cache_dir, config_hash, load_weights, save_weights
from robustlab.data import load_dataset
from robustlab.data.base import ImageDataset, TensorImages, iterate_batches
from robustlab.data.synth import ATTRIBUTES, COLORS, SynthConfig, SynthDataset
from robustlab.encoders import ClassifierFeatures, Encoder, HeadConfig, train_head
from robustlab.models.classifier import SYNTH_MEAN, SYNTH_STD, ImageClassifier
from robustlab.models.nets import SmallCNN
from robustlab.spectral import spectral_summary
from robustlab.train import TrainConfig, train_classifier

BACKGROUNDS = ("sky", "grass", "stripes")
TRAIN_WORLD = "synth:backgrounds=sky+grass+stripes"
OOD_WORLD = "synth:backgrounds=checker+bricks"
ABLATIONS = {
    "NMTune cov=0": {"cov_weight": 0.0},
    "NMTune svd=0": {"svd_weight": 0.0},
    "NMTune mse=0": {"mse_weight": 0.0},
}
METHODS = ("LP", "MLP", "MLP-res", "NMTune", *ABLATIONS)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}  # two-sided 95%, by df


class NoisyShapeColour(TensorImages):
    """The first ``n`` train images of the pre-training world (held in memory), labelled shape x colour.

    ``noise`` of the labels are replaced by a different class, uniformly (a fixed draw per ``seed``).
    """

    def __init__(self, n: int, noise: float, seed: int) -> None:
        synth = SynthDataset("train", config=SynthConfig(backgrounds=BACKGROUNDS), n=n)
        attrs = synth.attributes(torch.arange(n))
        self.clean = attrs["shape"] * len(COLORS) + attrs["color"]
        classes = [str(k) for k in range(len(ATTRIBUTES["shape"]) * len(COLORS))]
        generator = torch.Generator().manual_seed(seed)
        flip = torch.rand(n, generator=generator) < noise
        offset = 1 + torch.randint(len(classes) - 1, (n,), generator=generator)
        noisy = torch.where(flip, (self.clean + offset) % len(classes), self.clean)
        super().__init__(synth.get_batch(torch.arange(n))[0], noisy, classes=classes)


def pretrained(noise: float, seed: int, args: argparse.Namespace) -> tuple[ImageClassifier, dict[str, float]]:
    """The encoder pre-trained on noisy shape x colour labels (cached), and how well it fits them."""
    data = NoisyShapeColour(args.pretrain_n, noise, seed)
    config = TrainConfig(arch="smallcnn", num_classes=data.num_classes, seed=seed, steps=args.pretrain_steps)
    key = {"config": asdict(config), "noise": noise, "n": args.pretrain_n, "width": args.width}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallCNN(data.num_classes, width=args.width)
    model = ImageClassifier(
        net, mean=SYNTH_MEAN, std=SYNTH_STD, num_classes=data.num_classes, name="smallcnn", input_size=32
    )
    path = cache_dir("models") / f"smallcnn-shapecolour-noise{noise:g}-{config_hash(key)}.safetensors"
    if path.is_file():
        model.net.load_state_dict(load_weights(path))
        model.eval().requires_grad_(False)
    else:
        train_classifier(model, config, data=data, progress=True, why="(NMTune pre-training)")
        save_weights(path, model.net.state_dict(), metadata={"key": json.dumps(key)})
    with torch.inference_mode():
        predicted = torch.cat([model(x).argmax(1) for x in data.x.split(500)])
    noisy = data.y != data.clean
    fit = {
        "fit_noisy_labels": float((predicted == data.y).float().mean()),
        "memorised_flipped": float((predicted[noisy] == data.y[noisy]).float().mean()) if noisy.any() else 1.0,
    }
    return model, fit


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


def _fit_methods(
    views: Tensor, labels: Tensor, classes: int, task: str, epochs: int, seed: int
) -> dict[str, tuple[nn.Module, nn.Module]]:
    """method -> (feature map, head), all trained on the same stored views' frozen features."""
    stacked, stacked_labels = views.flatten(0, 1), labels.repeat(len(views))
    heads: dict[str, tuple[nn.Module, nn.Module]] = {}
    for kind, method in (("linear", "LP"), ("mlp", "MLP")):
        config = HeadConfig(task=task, kind=kind, n_train=len(stacked), seed=seed)
        heads[method] = (nn.Identity(), train_head(stacked, stacked_labels, config, classes))
    configs = {"MLP-res": NMTuneConfig(mse_weight=0.0, cov_weight=0.0, svd_weight=0.0, epochs=epochs)}
    configs["NMTune"] = NMTuneConfig(epochs=epochs)
    configs |= {name: NMTuneConfig(epochs=epochs, **weights) for name, weights in ABLATIONS.items()}
    for method, config in configs.items():
        heads[method] = train_nmtune(views, labels, classes, config, seed=seed)
    return heads


def run_seed(encoder: Encoder, data: dict[str, Any], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """task -> method -> numbers, for one downstream seed on one encoder."""
    views, _ = view_features(
        encoder, data["train"], args.n_train, views=args.views, shift=2, generator=torch.Generator().manual_seed(seed)
    )
    results: dict[str, Any] = {}
    for task in args.tasks:
        heads = _fit_methods(views, data["labels"][task]["train"], len(ATTRIBUTES[task]), task, args.epochs, seed)
        results[task] = {}
        for method, (tuner, head) in heads.items():
            with torch.inference_mode():
                row = {
                    split: float((head(tuner(data[split])).argmax(1) == data["labels"][task][split]).float().mean())
                    for split in ("id", "ood")
                }
                row |= spectral_summary(tuner(data["id"]))
            results[task][method] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--pretrain-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["shape", "color"])
    parser.add_argument("--pretrain-n", type=int, default=1000)
    parser.add_argument("--pretrain-steps", type=int, default=2000, help="2000 fits every noisy label at width 16")
    parser.add_argument("--width", type=int, default=16, help="SmallCNN width of the pre-trained encoder")
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default="nmtune-results.json")
    parser.add_argument("--merge", nargs="+", help="only print the tables of these result files, merged")
    args = parser.parse_args()
    if args.merge:
        merged: dict[str, Any] = {"runs": {}}
        for path in args.merge:
            with open(path) as handle:
                for noise, runs in json.load(handle)["runs"].items():
                    for pretrain_seed, run in runs.items():  # files may split one encoder's downstream seeds
                        entry = merged["runs"].setdefault(noise, {}).setdefault(pretrain_seed, {**run, "seeds": {}})
                        entry["seeds"].update(run["seeds"])
        print(tables(merged))
        return
    torch.manual_seed(0)  # entry point: nothing below should draw from it, but make sure
    labels = {
        task: {
            "train": _labels(TRAIN_WORLD, task, "val", args.n_train),
            "id": _labels(TRAIN_WORLD, task, "test", args.n_test),
            "ood": _labels(OOD_WORLD, task, "test", args.n_test),
        }
        for task in args.tasks
    }
    record: dict[str, Any] = {"args": vars(args), "runs": {}}
    started = time.perf_counter()
    for noise in args.noise:
        for pretrain_seed in args.pretrain_seeds:
            model, fit = pretrained(noise, pretrain_seed, args)
            encoder = ClassifierFeatures(model)
            data = {
                "train": load_dataset(TRAIN_WORLD, split="val"),
                "id": _encode(encoder, load_dataset(TRAIN_WORLD, split="test"), args.n_test),
                "ood": _encode(encoder, load_dataset(OOD_WORLD, split="test"), args.n_test),
                "labels": labels,
            }
            run: dict[str, Any] = {"fit": fit, "seeds": {}}
            record["runs"].setdefault(f"{noise:g}", {})[str(pretrain_seed)] = run
            for seed in args.seeds:  # written after every seed, so an interrupted run still leaves a table
                run["seeds"][str(seed)] = run_seed(encoder, data, args, seed)
                elapsed = time.perf_counter() - started
                print(f"noise {noise:g} pretrain {pretrain_seed} seed {seed} at {elapsed:.0f}s {fit}", flush=True)
                with open(args.out, "w") as handle:
                    json.dump(record, handle, indent=1)
    print(tables(record))


def _t_interval(values: list[float]) -> str:
    """Mean and 95% t interval, in points."""
    mean = 100 * statistics.mean(values)
    if len(values) < 2:
        return f"{mean:+.2f} (n=1)"
    half = T975.get(len(values) - 1, 1.96) * 100 * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (n={len(values)})"


def _interval(groups: list[list[float]]) -> str:
    """The t interval over all pairs, then over the groups' means (a group per encoder, when there are several).

    The pairs of one encoder share it, so the pair interval is too narrow; the encoder interval is the honest one.
    """
    pairs = _t_interval([value for group in groups for value in group])
    if len(groups) < 2:
        return pairs
    return f"{pairs}; by encoder {_t_interval([statistics.mean(group) for group in groups])}"


def tables(record: dict[str, Any]) -> str:
    """Markdown: the pre-training fit, per-method means, and NMTune - MLP-res paired over all seed pairs."""
    lines = ["| noise | pre-training seed | fits its noisy labels | memorised flipped labels |", "|---|---|---|---|"]
    for noise, runs in sorted(record["runs"].items(), key=lambda item: float(item[0])):
        for pretrain_seed, run in runs.items():
            fit = run["fit"]
            lines.append(
                f"| {noise} | {pretrain_seed} | {fit['fit_noisy_labels']:.3f} | {fit['memorised_flipped']:.3f} |"
            )
    lines += [
        "",
        "| task | noise | method | ID acc | OOD acc | SVE | LSVR | pairs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    diffs = ["", "| task | noise | comparison | ID (points, 95% CI) | OOD (points, 95% CI) |", "|---|---|---|---|---|"]
    for noise, runs in sorted(record["runs"].items(), key=lambda item: float(item[0])):
        groups = [list(run["seeds"].values()) for run in runs.values()]
        cells = [cell for group in groups for cell in group]
        for task in cells[0]:
            for method in METHODS:
                rows = [cell[task][method] for cell in cells]

                def mean(key: str, rows: list[dict[str, float]] = rows) -> float:
                    return statistics.mean(row[key] for row in rows)

                lines.append(
                    f"| {task} | {noise} | {method} | {100 * mean('id'):.1f} | {100 * mean('ood'):.1f} | "
                    f"{mean('sve'):.3f} | {mean('lsvr'):.4f} | {len(rows)} |"
                )
            for method in ("NMTune", *ABLATIONS):
                gaps = {
                    split: [
                        [cell[task][method][split] - cell[task]["MLP-res"][split] for cell in group] for group in groups
                    ]
                    for split in ("id", "ood")
                }
                diffs.append(
                    f"| {task} | {noise} | {method} - MLP-res | {_interval(gaps['id'])} | {_interval(gaps['ood'])} |"
                )
    return "\n".join(lines + diffs + _noise_gaps(record))


def _noise_gaps(record: dict[str, Any]) -> list[str]:
    """Each noisy pre-training minus the clean one, per method, paired by (pre-training seed, downstream seed)."""
    runs = record["runs"]
    if "0" not in runs:
        return []
    lines = [
        "",
        "| task | method | noise | minus clean: ID (points, 95% CI) | OOD (points, 95% CI) |",
        "|---|---|---|---|---|",
    ]
    for noise in sorted((noise for noise in runs if noise != "0"), key=float):
        groups: list[list[tuple[dict[str, Any], dict[str, Any]]]] = []
        for pretrain_seed, clean_run in runs["0"].items():
            noisy_cells = runs[noise].get(pretrain_seed, {}).get("seeds", {})
            groups.append(
                [(cell, noisy_cells[seed]) for seed, cell in clean_run["seeds"].items() if seed in noisy_cells]
            )
        groups = [group for group in groups if group]
        if not groups:
            continue
        for task in groups[0][0][0]:
            for method in METHODS:
                gaps = {
                    split: [
                        [noisy[task][method][split] - clean[task][method][split] for clean, noisy in group]
                        for group in groups
                    ]
                    for split in ("id", "ood")
                }
                lines.append(f"| {task} | {method} | {noise} | {_interval(gaps['id'])} | {_interval(gaps['ood'])} |")
    return lines


if __name__ == "__main__":
    main()
