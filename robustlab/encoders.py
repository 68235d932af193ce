"""Encoders as first-class victims: the penultimate features of any classifier, and heads trained on them.

A downstream-agnostic attack (AdvEncoder) differentiates an *encoder* and is scored on downstream
classifiers it never saw; NMTune tunes heads on frozen features. Both need the same two things:
features of a model robustlab can load (torchvision nets, the embedded nets, a user
``package.module:factory``), and heads trained on those frozen features for several tasks of a
dataset (on the synthetic world: shape, colour, background, size). The encoder takes ``[0, 1]``
images and normalizes them itself, like :class:`robustlab.models.classifier.ImageClassifier`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.cache import cache_dir, config_hash, load_weights, save_weights
from robustlab.data import load_dataset
from robustlab.data.base import ImageDataset, iterate_batches
from robustlab.errors import ConfigError
from robustlab.models.loading import ImageClassifier, load_model
from robustlab.optimize import descend
from robustlab.registry import Registry
from robustlab.seeding import global_rng_seeded

__all__ = [
    "ENCODERS",
    "ClassifierFeatures",
    "DownstreamModel",
    "Encoder",
    "HeadConfig",
    "encoder_fingerprint",
    "load_encoder",
    "make_head",
    "train_head",
    "trained_heads",
]

HEAD_RECIPE = 1  # bump when head training changes what it produces, so cached heads are not reused


class Encoder(nn.Module):
    """``[0, 1]`` images ``(B, C, H, W)`` -> features ``(B, feature_dim)``; eval mode, frozen parameters."""

    feature_dim: int
    input_size: int
    name: str


class ClassifierFeatures(Encoder):
    """The input of a classifier's last linear layer: its penultimate features.

    Found by a forward hook on the last :class:`torch.nn.Linear`, so it works for every registered
    architecture and for user models alike without knowing where their head lives.

    Example:
        >>> model = load_model("smallcnn", weights="random", progress=False)
        >>> ClassifierFeatures(model)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 128])
    """

    def __init__(self, classifier: ImageClassifier) -> None:
        super().__init__()
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"{classifier.name} has no linear layer, so its penultimate features cannot be found")
        self.classifier = classifier
        self._head = linears[-1]
        self.feature_dim = self._head.in_features
        self.input_size = classifier.input_size
        self.name = classifier.name
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        captured: list[Tensor] = []
        handle = self._head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            self.classifier(x)
        finally:
            handle.remove()
        return captured[-1].flatten(1)


ENCODERS: Registry[Encoder] = Registry("encoder")
"""Encoders that are not a classifier's features (a self-supervised network): ``factory(*, weights, progress)``."""


def load_encoder(
    name: str,
    *,
    weights: str | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    progress: bool = True,
) -> Encoder:
    """A registered encoder (:data:`ENCODERS`), else the penultimate features of ``load_model(name, ...)``.

    Either way it is frozen, in eval mode, and takes ``[0, 1]`` images.
    """
    if name in ENCODERS:
        encoder = ENCODERS.get(name).factory(weights=weights, progress=progress)
        return encoder.eval().requires_grad_(False)
    model = load_model(name, weights=weights, num_classes=num_classes, image_size=image_size, progress=progress)
    return ClassifierFeatures(model)


def encoder_fingerprint(encoder: nn.Module) -> str:
    """A hash of the encoder's weights: heads trained on other weights must not be reused from the cache."""
    digest = hashlib.sha256()
    for key, value in sorted(encoder.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class HeadConfig:
    """One downstream head: which attribute it predicts, its kind and its training recipe.

    ``kind`` is ``linear`` (a linear probe) or ``mlp`` (AdvEncoder's 3-layer non-linear classifier,
    ``D -> 512 -> 256 -> K`` with ReLU).
    """

    task: str
    kind: str = "mlp"
    data: str = "synth"
    n_train: int = 4096
    steps: int = 300
    batch_size: int = 256
    lr: float = 1e-2
    seed: int = 0
    recipe: int = HEAD_RECIPE

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "mlp"):
            raise ConfigError(f"head kind must be linear or mlp, got {self.kind!r}")
        if self.n_train < 1 or self.steps < 1 or self.batch_size < 1:
            raise ConfigError("head n_train, steps and batch_size must be positive")


def make_head(kind: str, feature_dim: int, num_classes: int) -> nn.Module:
    """A fresh head of ``kind`` (see :class:`HeadConfig`)."""
    if kind == "linear":
        return nn.Linear(feature_dim, num_classes)
    return nn.Sequential(
        nn.Linear(feature_dim, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, num_classes)
    )


class DownstreamModel(nn.Module):
    """``head(encoder(x))``: a classifier over ``[0, 1]`` images that the evaluator can score.

    ``task`` names the attribute it predicts; ``classes`` its class names.
    """

    def __init__(self, encoder: Encoder, head: nn.Module, *, task: str, classes: Sequence[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.task = task
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self.input_size = encoder.input_size
        self.name = f"{encoder.name}+{task}"
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def _task_data(config: HeadConfig, split: str, image_size: int) -> ImageDataset:
    """The ``split`` of ``config.data`` labelled by ``config.task`` (``synth:target=TASK`` for the synthetic world)."""
    spec = config.data
    if spec.split(":", 1)[0] == "synth":
        sep = "," if ":" in spec else ":"
        spec = f"{spec}{sep}target={config.task}"
    return load_dataset(spec, split=split, image_size=image_size)


def _features(encoder: Encoder, dataset: ImageDataset, n: int, *, progress: bool) -> tuple[Tensor, Tensor]:
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    feats, labels = [], []
    indices = torch.arange(min(n, len(dataset)))
    batches = iterate_batches(dataset, indices, 256)
    for _, x, y in tqdm(batches, total=-(-len(indices) // 256), desc="features", disable=not progress, leave=False):
        with torch.inference_mode():
            feats.append(encoder(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def train_head(
    features: Tensor, labels: Tensor, config: HeadConfig, num_classes: int, *, progress: bool = False
) -> nn.Module:
    """Fit a head of ``config.kind`` on precomputed features (AdamW, cosine schedule), deterministically."""
    generator = torch.Generator().manual_seed(config.seed)
    with global_rng_seeded(config.seed):  # layer init draws from the global RNG: make it a function of the seed
        head = make_head(config.kind, features.shape[1], num_classes)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    head.train()
    for _ in tqdm(
        range(config.steps),
        desc=f"training the {config.task} head (first use, then cached)",
        disable=not progress,
        leave=False,
    ):
        chunk = torch.randint(len(features), (config.batch_size,), generator=generator)
        loss = F.cross_entropy(head((features[chunk] - mean) / std), labels[chunk])
        descend(optimizer, loss, schedule)
    return _Standardized(head, mean, std).eval().requires_grad_(False)


class _Standardized(nn.Module):
    """A head that standardizes features with the training set's statistics first (part of the head)."""

    mean: Tensor
    std: Tensor

    def __init__(self, head: nn.Module, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, features: Tensor) -> Tensor:
        return self.head((features - self.mean) / self.std)


def trained_heads(
    encoder: Encoder, configs: Sequence[HeadConfig], *, progress: bool = True
) -> dict[str, DownstreamModel]:
    """A downstream model per config, training each head on first use and loading the cache afterwards.

    Heads are keyed by the config, the encoder's weights (:func:`encoder_fingerprint`) and the image size it is
    fed (one encoder may be fed 32 or 64 px images); features are computed once per training set and shared by
    the heads that use it.
    """
    fingerprint = encoder_fingerprint(encoder)
    device = next((p.device for p in encoder.parameters()), torch.device("cpu"))
    models: dict[str, DownstreamModel] = {}
    cached_features: dict[tuple[str, str, int], tuple[Tensor, Tensor]] = {}
    for config in configs:
        train = _task_data(config, "train", encoder.input_size)
        head = make_head(config.kind, encoder.feature_dim, train.num_classes)
        head = _Standardized(head, torch.zeros(encoder.feature_dim), torch.ones(encoder.feature_dim))
        key = {"head": asdict(config), "encoder": fingerprint, "input_size": encoder.input_size}
        path = cache_dir("heads") / f"{encoder.name}-{config.task}-{config.kind}-{config_hash(key)}.safetensors"
        if path.is_file():
            head.load_state_dict(load_weights(path))
        else:
            data_key = (config.data, config.task, config.n_train)
            if data_key not in cached_features:
                cached_features[data_key] = _features(encoder, train, config.n_train, progress=progress)
            head = train_head(*cached_features[data_key], config, train.num_classes, progress=progress)
            save_weights(path, head.state_dict(), metadata={"config": json.dumps(key)})
        models[config.task] = DownstreamModel(encoder, head.to(device), task=config.task, classes=train.classes)
    return models
