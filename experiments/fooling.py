"""Fooling images on the synthetic world: budget, OOD view and retraining (Nguyen et al., CVPR 2015, §3).

Usage: ``.venv/bin/python experiments/fooling.py --out DIR [--part budgets|retraining] [--threads N]``.

1. Each encoding (CPPN, direct, gradient ascent) with its default budget against the default synthetic
   classifier (``load_model("smallcnn")``): classes fooled, median confidence, queries, wall and CPU time.
   The images, grid and JSON go to ``OUT/<encoding>/`` as ``robustlab fool`` writes them.
2. OOD view: AUROC of the max-softmax detector (Hendrycks & Gimpel 2017) between 1000 real test images and
   each encoding's fooling images.
3. Retraining (paper §3.6): a pool of fooling images (one CPPN and one gradient run) becomes an 11th class, the
   model is trained on it, and CPPN evolution runs again against the new model.
4. MNIST-like sanity victim (``--part mnistlike``; :mod:`robustlab.models.mnistlike`, LeNet on 28x28 grey images): both
   evolved encodings with the official populations (CPPN 400, direct 200) over ``--seeds``, classes fooled at 50
   generations and, resumed from the same archive, at ``--long`` generations; the AUROC pools every seed's images.

Prints a Markdown report; ``experiments/RESULTS-fooling.md`` records one run of it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from robustlab.attacks.fooling.attack import Fooling, max_softmax_auroc
from robustlab.attacks.fooling.outputs import write_fooling_outputs
from torch import Tensor

from robustlab.data.synth import SHAPES, SynthDataset
from robustlab.models.loading import SYNTH_MEAN, SYNTH_STD, ImageClassifier, load_model
from robustlab.models.mnistlike import MnistLike, trained_mnistlike_classifier
from robustlab.models.nets import SmallCNN
from robustlab.store import MemoryStore
from robustlab.tasks import confidence_metrics
from robustlab.train import TrainConfig, train_classifier

ENCODINGS = ("cppn", "direct", "gradient")
POOL_ENCODINGS = ("cppn", "gradient")  # runs whose images make the retraining's extra class
POOL_SEED = 10
OFFICIAL_POPULATIONS = {"cppn": 400, "direct": 200}
PAPER_GENERATIONS = 50  # "within 50 generations" on MNIST (paper §3.1)
RETRAIN_STEPS = 300


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


def budgets(model: ImageClassifier, out: Path) -> None:
    """Part 1: each encoding at its default budget, with the max-softmax AUROC against real test images."""
    x_test, y_test = SynthDataset("test").get_batch(torch.arange(1000))
    real_conf = max_softmax(model, x_test)
    print("## 1. Default budgets against smallcnn (synthetic world, 10 classes)\n")
    print("| encoding | fooled >= 99% | fooled >= 99.99% | median conf. | queries | wall s | CPU s | AUROC |")
    print("|---|---|---|---|---|---|---|---|")
    for encoding in ENCODINGS:
        run = run_encoding(model, encoding, out)
        m = confidence_metrics(run["result"]["confidence"], queries=int(run["result"]["queries"]))
        auroc = max_softmax_auroc(real_conf, max_softmax(model, run["result"]["images"]))
        print(
            f"| {encoding} | {m['classes_fooled_99']:.0f}/10 | {m['classes_fooled_9999']:.0f}/10 "
            f"| {m['median_confidence']:.5f} "
            f"| {m['queries']:.0f} | {run['wall']:.1f} | {run['cpu']:.1f} | {auroc:.3f} |",
            flush=True,
        )
    print(
        f"\nReal test images (n=1000): accuracy {accuracy(model, x_test, y_test):.3f}, median max-softmax "
        f"{float(real_conf.median()):.5f}, fraction >= 99%: {float((real_conf >= 0.99).float().mean()):.3f}."
    )


def retraining(model: ImageClassifier, out: Path) -> None:
    """Part 2: fooling images as an 11th class, retrain, evolve again (paper §3.6)."""
    x_test, y_test = SynthDataset("test").get_batch(torch.arange(1000))
    print("\n## 2. Retraining with fooling images as an 11th class\n")
    pool = torch.cat([_images(model, encoding, POOL_SEED) for encoding in POOL_ENCODINGS])
    held_out = _images(model, "gradient", POOL_SEED + 1)
    retrained = retrain_with_fooling_class(model, pool)
    with torch.no_grad():
        pool_as_fooling = float((retrained(pool).argmax(dim=1) == 10).float().mean())
        held_out_as_fooling = float((retrained(held_out).argmax(dim=1) == 10).float().mean())
    wall, cpu = time.perf_counter(), time.process_time()
    again = Fooling(encoding="cppn").generate(retrained, generator=torch.Generator().manual_seed(0), progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    m = confidence_metrics(again["confidence"][:10], queries=int(again["queries"]))
    print(f"- pool: {len(pool)} images ({', '.join(POOL_ENCODINGS)}, seed {POOL_SEED}); {RETRAIN_STEPS} steps")
    print(
        f"- retrained model: accuracy on real test images {accuracy(retrained, x_test, y_test):.3f}; pool "
        f"classified as 'fooling': {pool_as_fooling:.3f}; unseen gradient images (seed {POOL_SEED + 1}): "
        f"{held_out_as_fooling:.3f}"
    )
    print(
        f"- CPPN evolution again (default budget, seed 0; {wall:.0f} s wall, {cpu:.0f} s CPU): "
        f"{m['classes_fooled_99']:.0f}/10 original classes fooled at >= 99%, "
        f"{m['classes_fooled_9999']:.0f}/10 at >= 99.99%, "
        f"median confidence {m['median_confidence']:.5f}"
    )
    auroc = max_softmax_auroc(max_softmax(retrained, x_test), max_softmax(retrained, again["images"][:10]))
    print(f"- max-softmax AUROC (real test vs the new fooling images) under the retrained model: {auroc:.3f}")
    write_fooling_outputs(again, out / "retrained-cppn", class_names=[*SHAPES, "fooling"], seconds=wall, meta={})


def mnistlike(seeds: list[int], long: int) -> None:
    """Part 4: both evolved encodings against LeNet on the MNIST-like world, at 50 and at ``long`` generations."""
    model = trained_mnistlike_classifier(progress=False)
    x_test, y_test = MnistLike("test", n=1000).get_batch(torch.arange(1000))
    real_conf = max_softmax(model, x_test)
    print("\n## 4. MNIST-like sanity victim (LeNet, 28x28 grey, 10 classes)\n")
    print(
        f"Real test images (n=1000): accuracy {accuracy(model, x_test, y_test):.3f}, median max-softmax "
        f"{float(real_conf.median()):.5f}, fraction >= 99.99%: {float((real_conf >= 0.9999).float().mean()):.3f}.\n"
    )
    print("| encoding | population | seed | generations | fooled >= 99% | fooled >= 99.99% | median conf. | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for encoding, population in OFFICIAL_POPULATIONS.items():
        images = {PAPER_GENERATIONS: [], long: []}
        for seed in seeds:
            store, generator = MemoryStore(), torch.Generator().manual_seed(seed)
            for generations in images:  # the longer run resumes the 50-generation archive from the store
                cpu = time.process_time()
                attack = Fooling(encoding=encoding, generations=generations, population=population)
                result = attack.generate(model, generator=generator, store=store, progress=False)
                m = confidence_metrics(result["confidence"], queries=int(result["queries"]))
                images[generations].append(result["images"])
                print(
                    f"| {encoding} | {population} | {seed} | {generations} | {m['classes_fooled_99']:.0f}/10 "
                    f"| {m['classes_fooled_9999']:.0f}/10 | {m['median_confidence']:.6f} "
                    f"| {time.process_time() - cpu:.0f} |",
                    flush=True,
                )
        for generations, found in images.items():
            auroc = max_softmax_auroc(real_conf, max_softmax(model, torch.cat(found)))
            print(
                f"\n{encoding}, {generations} generations: AUROC {auroc:.3f} (1000 real vs {10 * len(found)} fooling)"
            )
    print()


def _images(model: ImageClassifier, encoding: str, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return Fooling(encoding=encoding).generate(model, generator=generator, progress=False)["images"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for the images, grids and JSON.")
    parser.add_argument("--part", choices=["budgets", "retraining", "mnistlike", "all"], default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="MNIST-like part: evolution seeds.")
    parser.add_argument("--long", type=int, default=200, help="MNIST-like part: generations of the longer run.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("smallcnn", progress=False)
    if args.part in ("budgets", "all"):
        budgets(model, args.out)
    if args.part in ("retraining", "all"):
        retraining(model, args.out)
    if args.part in ("mnistlike", "all"):
        mnistlike(args.seeds, args.long)


if __name__ == "__main__":
    main()
