"""The ceiling of a universal perturbation in the synthetic world: robustlab's UAPs vs ART's, one model, one data.

Every attack learns one L∞ ``delta`` on the first ``--n-fit`` images of the train split and is scored on
the first ``--n`` images of the test split (what ``robustlab eval -n N`` scores on ``synth``), against the
default model (``smallcnn``, ``weights=synth``). Rows: robust accuracy with its Wilson 95% interval, for
every budget and seed:

* ``noise``: random signs at the budget (the floor a universal attack must beat);
* ``uap``: robustlab's (Shafahi et al.: signed SGD on the clipped batch cross-entropy), its defaults;
* ``uap long``: the same with ``--long-epochs`` epochs and a quarter of the step (more of the same SGD);
* ``art fgsm`` / ``art deepfool``: ART's ``UniversalPerturbation`` (Moosavi-Dezfooli et al. 2017: walk the
  fit images, push ``delta`` past the boundary of each image it does not yet fool with the inner attack,
  project), with its FGSM inner attack (``--art-n-fit`` images, ``--art-passes`` passes) and its DeepFool one
  (the original algorithm; one pass over ``--deepfool-n-fit`` images, 10 DeepFool iterations each: ART runs
  it one image at a time, about 0.7 s an image here). ART is a benchmark reference only, not a
  dependency: ``pip install adversarial-robustness-toolbox``.

Run from the repository root (about 25 minutes on 2 busy CPU cores)::

    OMP_NUM_THREADS=1 python experiments/bench_uap.py --seeds 0,1 --eps 10,16,32 > experiments/RESULTS-uap.md
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from robustlab.attacks.uap import UAP, UniversalNoise
from torch import Tensor, nn

from robustlab.data import load_dataset
from robustlab.intervals import wilson_interval
from robustlab.models.loading import load_model

Fit = Callable[[nn.Module, Tensor, Tensor, float, int], Tensor]


def robustlab_fit(make: Callable[[float], UAP | UniversalNoise]) -> Fit:
    def fit(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> Tensor:
        attack = make(eps)
        attack.fit(model, list(zip(x, y, strict=True)), generator=torch.Generator().manual_seed(seed), progress=False)
        return attack.fitted()["delta"]

    return fit


def art_fit(attacker: str, passes: int, **params: object) -> Fit:
    def fit(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> Tensor:
        from art.attacks.evasion import UniversalPerturbation
        from art.estimators.classification import PyTorchClassifier

        classifier = PyTorchClassifier(
            model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10, clip_values=(0.0, 1.0)
        )
        np.random.seed(seed)  # ART shuffles the fit images with numpy's global generator
        attack = UniversalPerturbation(
            classifier,
            attacker=attacker,
            attacker_params=params,
            eps=eps,
            norm=np.inf,
            max_iter=passes,
            delta=0.0,
            verbose=False,
        )
        attack.generate(x.numpy())
        return torch.from_numpy(attack.noise).float()[:1]

    return fit


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> float:
    with torch.no_grad():
        return (model((x + delta).clamp(0, 1)).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="test images scored")
    parser.add_argument("--n-fit", type=int, default=2048, help="train images the robustlab UAPs learn on")
    parser.add_argument("--art-n-fit", type=int, default=512, help="train images ART walks (one at a time: slow)")
    parser.add_argument("--art-passes", type=int, default=2)
    parser.add_argument("--deepfool-n-fit", type=int, default=128, help="fit images of ART's DeepFool variant")
    parser.add_argument("--long-epochs", type=int, default=10)
    parser.add_argument("--eps", default="10,16,32", help="budgets, in 1/255")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--only", default="", help="comma-separated attack names to run (default: all)")
    args = parser.parse_args()

    model = load_model("smallcnn", weights="synth", progress=False).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    test, train = load_dataset("synth", split="test"), load_dataset("synth", split="train")
    x, y = torch.stack([test[i][0] for i in range(args.n)]), torch.tensor([test[i][1] for i in range(args.n)])
    n_fit = max(args.n_fit, args.art_n_fit, args.deepfool_n_fit)
    fit_x = torch.stack([train[i][0] for i in range(n_fit)])
    fit_y = torch.tensor([train[i][1] for i in range(n_fit)])
    attacks: dict[str, tuple[Fit, int]] = {
        "noise": (robustlab_fit(lambda eps: UniversalNoise(eps=eps)), args.n_fit),
        "uap": (robustlab_fit(lambda eps: UAP(eps=eps, n_fit=args.n_fit)), args.n_fit),
        "uap long": (
            robustlab_fit(lambda eps: UAP(eps=eps, n_fit=args.n_fit, epochs=args.long_epochs, step_size=eps / 32)),
            args.n_fit,
        ),
        "art fgsm": (art_fit("fgsm", args.art_passes), args.art_n_fit),
        "art deepfool": (art_fit("deepfool", 1, max_iter=10, verbose=False), args.deepfool_n_fit),
    }
    chosen = [name for name in attacks if not args.only or name in args.only.split(",")]
    print(f"clean accuracy {robust_accuracy(model, x, y, torch.zeros(1)):.3f} on {args.n} test images\n")
    print("| attack | eps | seed | robust acc | Wilson 95% | fit s |\n|---|---|---|---|---|---|")
    for eps_255 in (int(e) for e in args.eps.split(",")):
        for name in chosen:
            fit, n = attacks[name]
            for seed in (int(s) for s in args.seeds.split(",")):
                started = time.perf_counter()
                delta = fit(model, fit_x[:n], fit_y[:n], eps_255 / 255, seed)
                seconds = time.perf_counter() - started
                assert float(delta.abs().max()) <= eps_255 / 255 + 1e-6, name
                acc = robust_accuracy(model, x, y, delta)
                low, high = wilson_interval(acc, args.n)
                cells = (name, f"{eps_255}/255", seed, f"{acc:.3f}", f"[{low:.3f}, {high:.3f}]", f"{seconds:.0f}")
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)  # a shared 2-core machine: one thread each is several times faster than contention
    main()
