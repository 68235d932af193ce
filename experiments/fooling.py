"""Fooling images on the synthetic world: budget, OOD view and retraining (Nguyen et al., CVPR 2015, §3).

Usage: ``.venv/bin/python experiments/fooling.py --out /tmp/fooling`` (about half an hour on 2 CPU cores).

1. Each encoding (CPPN, direct, gradient ascent) with its default budget against the default synthetic
   classifier (``load_model("smallcnn")``): classes fooled, median confidence, queries, wall and CPU time.
   The images, grid and JSON go to ``OUT/<encoding>/`` as ``robustlab fool`` writes them.
2. OOD view: AUROC of the max-softmax detector (Hendrycks & Gimpel 2017) between 1000 real test images and
   each encoding's fooling images.
3. Retraining (paper §3.6): a pool of CPPN fooling images from several seeds becomes an 11th class, the model
   is trained on it, and CPPN evolution runs again against the new model.

Prints a Markdown report; ``experiments/RESULTS-fooling.md`` records one run of it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from robustlab.attacks._fooling_outputs import write_fooling_outputs
from robustlab.attacks.fooling import Fooling, fooling_metrics, max_softmax_auroc
from torch import Tensor

from robustlab.data.synth import SHAPES, SynthDataset
from robustlab.models import SYNTH_MEAN, SYNTH_STD, ImageClassifier, load_model
from robustlab.nets import SmallCNN
from robustlab.train import TrainConfig, train_classifier

ENCODINGS = ("cppn", "direct", "gradient")
POOL_SEEDS = range(10, 15)  # CPPN runs whose images make the retraining's extra class
RETRAIN_STEPS = 400


class WithFoolingClass:
    """The synthetic train split plus fooling images as class ``10``, drawn as often as any real class."""

    def __init__(self, base: SynthDataset, fooling: Tensor) -> None:
        self.base, self.fooling = base, fooling
        self.extra = len(base) // base.num_classes
        self.num_classes = base.num_classes + 1
        self.classes = [*base.classes, "fooling"]

    def __len__(self) -> int:
        return len(self.base) + self.extra

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x, y = self.get_batch(torch.tensor([index]))
        return x[0], int(y[0])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        real = indices < len(self.base)
        x = torch.empty(len(indices), *self.fooling.shape[1:])
        y = torch.full((len(indices),), self.base.num_classes, dtype=torch.long)
        if real.any():
            x[real], y[real] = self.base.get_batch(indices[real])
        pool = (indices[~real] - len(self.base)) % len(self.fooling)
        x[~real] = self.fooling[pool]
        return x, y


def run_encoding(model: ImageClassifier, encoding: str, out: Path, seed: int = 0) -> dict[str, Any]:
    """One default-budget run, timed, written as ``robustlab fool`` writes it."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = Fooling(encoding=encoding).generate(model, generator=torch.Generator().manual_seed(seed), progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    names = [*SHAPES, "fooling"][: model.num_classes]
    write_fooling_outputs(result, out / encoding, class_names=names, seconds=wall, meta={"seed": seed})
    return {"result": result, "wall": wall, "cpu": cpu}


def max_softmax(model: ImageClassifier, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).softmax(dim=1).amax(dim=1)


def retrain_with_fooling_class(model: ImageClassifier, pool: Tensor) -> ImageClassifier:
    """An 11-class copy of ``model`` fine-tuned on the train split plus ``pool`` as class 10.

    Deviation: the paper trains DNN2 from scratch; fine-tuning the trained features (new head, the old head's
    rows copied) for ``RETRAIN_STEPS`` steps keeps this experiment within CPU minutes.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        net = SmallCNN(11)
    state = {k: v for k, v in model.net.state_dict().items() if not k.startswith("classifier")}
    net.load_state_dict(state, strict=False)
    with torch.no_grad():
        net.classifier.weight[:10] = model.net.classifier.weight
        net.classifier.bias[:10] = model.net.classifier.bias
    retrained = ImageClassifier(
        net, mean=SYNTH_MEAN, std=SYNTH_STD, num_classes=11, name="smallcnn+fool", input_size=32
    )
    config = replace(TrainConfig(arch="smallcnn", num_classes=11), steps=RETRAIN_STEPS, lr=1e-3)
    train_classifier(retrained, config, data=WithFoolingClass(SynthDataset("train"), pool), progress=False)
    return retrained


def accuracy(model: ImageClassifier, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for the images, grids and JSON.")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model("smallcnn", progress=False)
    x_test, y_test = SynthDataset("test").get_batch(torch.arange(1000))
    real_conf = max_softmax(model, x_test)

    print("## 1. Default budgets against smallcnn (synthetic world, 10 classes)\n")
    print("| encoding | fooled >= 99% | fooled >= 99.99% | median conf. | queries | wall s | CPU s | AUROC |")
    print("|---|---|---|---|---|---|---|---|")
    runs = {}
    for encoding in ENCODINGS:
        runs[encoding] = run = run_encoding(model, encoding, args.out)
        m = fooling_metrics(run["result"]["confidence"], queries=int(run["result"]["queries"]))
        auroc = max_softmax_auroc(real_conf, max_softmax(model, run["result"]["images"]))
        print(
            f"| {encoding} | {m['fooled@0.99']:.0f}/10 | {m['fooled@0.9999']:.0f}/10 | {m['median_confidence']:.5f} "
            f"| {m['queries']:.0f} | {run['wall']:.1f} | {run['cpu']:.1f} | {auroc:.3f} |"
        )
    print(
        f"\nReal test images: clean accuracy {accuracy(model, x_test, y_test):.3f}, median max-softmax "
        f"{float(real_conf.median()):.5f}, fraction >= 99%: {float((real_conf >= 0.99).float().mean()):.3f}."
    )

    print("\n## 2. Retraining with the fooling images as an 11th class\n")
    pool = torch.cat(
        [
            Fooling(encoding="cppn").generate(model, generator=torch.Generator().manual_seed(s), progress=False)[
                "images"
            ]
            for s in POOL_SEEDS
        ]
    )
    retrained = retrain_with_fooling_class(model, pool)
    with torch.no_grad():
        pool_as_fooling = float((retrained(pool).argmax(dim=1) == 10).float().mean())
        first_round = runs["cppn"]["result"]["images"]
        held_out_as_fooling = float((retrained(first_round).argmax(dim=1) == 10).float().mean())
    again = Fooling(encoding="cppn").generate(retrained, generator=torch.Generator().manual_seed(0), progress=False)
    m = fooling_metrics(again["confidence"][:10], queries=int(again["queries"]))
    print(f"- pool: {len(pool)} CPPN images from seeds {list(POOL_SEEDS)}; retrained {RETRAIN_STEPS} steps")
    print(
        f"- retrained model: clean accuracy {accuracy(retrained, x_test, y_test):.3f}; pool classified as "
        f"'fooling': {pool_as_fooling:.3f}; first-round images (seed 0, not in the pool): {held_out_as_fooling:.3f}"
    )
    print(
        f"- evolving again (CPPN, default budget, seed 0) against the retrained model: "
        f"{m['fooled@0.99']:.0f}/10 original classes fooled at >= 99%, {m['fooled@0.9999']:.0f}/10 at >= 99.99%, "
        f"median confidence {m['median_confidence']:.5f}"
    )
    auroc = max_softmax_auroc(max_softmax(retrained, x_test), max_softmax(retrained, again["images"][:10]))
    print(f"- max-softmax AUROC (real vs new fooling images) under the retrained model: {auroc:.3f}")
    names = [*SHAPES, "fooling"]
    write_fooling_outputs(again, args.out / "retrained-cppn", class_names=names, seconds=0.0, meta={"seed": 0})


if __name__ == "__main__":
    main()
