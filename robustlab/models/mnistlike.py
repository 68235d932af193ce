"""An MNIST-shaped sanity victim for fooling images: 28x28 grey images of 10 classes and Caffe's LeNet.

Nguyen et al. (CVPR 2015, §3.1) report that on MNIST both encodings, direct and CPPN, produce images
that LeNet labels at >= 99.99% for every class within about 50 generations. Datasets cannot be
downloaded here, so the world is the synthetic one (:mod:`robustlab.data.synth`) rendered at 28x28
and turned to grey (ITU-R 601 luma): ten shape classes, like MNIST's ten digits, but on the synthetic
world's textured backgrounds rather than on black. The net is Caffe's ``examples/mnist/lenet``, the
paper's MNIST model. Trained once with the synthetic models' recipe and cached.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import torch
from torch import Tensor, nn

from robustlab.cache import cache_dir, config_hash, load_weights, save_weights
from robustlab.data.synth import SynthConfig, SynthDataset
from robustlab.models.classifier import ImageClassifier
from robustlab.seeding import global_rng_seeded
from robustlab.train import TrainConfig, train_classifier

__all__ = ["MNISTLIKE_RECIPE", "MNISTLIKE_SIZE", "LeNet", "MnistLike", "trained_mnistlike_classifier"]

MNISTLIKE_SIZE = 28
MNISTLIKE_RECIPE = TrainConfig(arch="lenet", image_size=MNISTLIKE_SIZE, steps=800)
"""The synthetic models' recipe (AdamW 2e-3, one-cycle, batch 128, 800 steps) at 28 px."""

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


class MnistLike:
    """One split of the synthetic world at 28x28, one grey channel; labels are the 10 shapes.

    Example:
        >>> x, y = MnistLike("test", n=4).get_batch(torch.arange(2))
        >>> x.shape, y.shape
        (torch.Size([2, 1, 28, 28]), torch.Size([2]))
    """

    def __init__(self, split: str = "train", *, n: int | None = None) -> None:
        self.synth = SynthDataset(split, config=SynthConfig(image_size=MNISTLIKE_SIZE), n=n)
        self.classes = self.synth.classes
        self.num_classes = self.synth.num_classes

    def __len__(self) -> int:
        return len(self.synth)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x, y = self.get_batch(torch.tensor([index]))
        return x[0], int(y[0])

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Grey images ``(B, 1, 28, 28)`` in ``[0, 1]`` and int64 labels ``(B,)``."""
        x, y = self.synth.get_batch(indices)
        return (x * _LUMA).sum(dim=1, keepdim=True).clamp(0, 1), y


class LeNet(nn.Module):
    """Caffe's MNIST LeNet: conv 20@5x5, max-pool, conv 50@5x5, max-pool, 500 ReLU units, 10 outputs (431k)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.Flatten()
        )
        self.classifier = nn.Sequential(nn.Linear(50 * 4 * 4, 500), nn.ReLU(), nn.Linear(500, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.classifier(self.features(x))
        return logits


def trained_mnistlike_classifier(*, progress: bool = True) -> ImageClassifier:
    """LeNet trained on :class:`MnistLike`'s train split with :data:`MNISTLIKE_RECIPE`: trained once, then cached."""
    config = MNISTLIKE_RECIPE
    with global_rng_seeded(config.seed):  # layer init draws from the global RNG: make it a function of the seed
        net = LeNet(config.num_classes)
    model = ImageClassifier(
        net, mean=(0.5,), std=(0.25,), num_classes=config.num_classes, name="lenet-mnistlike", input_size=28
    )
    path = cache_dir("models") / f"lenet-mnistlike-{config_hash(asdict(config))}.safetensors"
    if path.is_file():
        model.net.load_state_dict(load_weights(path))
        return model.eval().requires_grad_(False)
    train_classifier(
        model, config, data=MnistLike("train"), progress=progress, why="(MNIST-like): first use, then cached"
    )
    save_weights(path, model.net.state_dict(), metadata={"config": json.dumps(asdict(config))})
    return model
