"""Contextual fusion (Akumalla, Haney, Bazhenov, 2020): classify from object and scene features together.

Two frozen networks see the same image in parallel: the *object* stream (the model being defended,
an ImageNet CNN in the paper) and a *scene* stream (a Places365 CNN in the paper; on the synthetic
world a background classifier robustlab trains itself). A small head learns the class from both
feature vectors. When the scene predicts the class (the world's ``context_p``), the head can lean on
a stream an object-targeted perturbation does not aim at.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from robustlab.defenses.raw_isp import dataset_identity
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.cache import cache_dir, config_hash, load_weights, save_weights
from robustlab.data.base import iterate_batches
from robustlab.defense import DEFENSES, Defense
from robustlab.encoders import ClassifierFeatures, Encoder, encoder_fingerprint
from robustlab.errors import ConfigError, WeightsUnavailableError
from robustlab.models.classifier import MODELS
from robustlab.models.loading import ImageClassifier, load_model
from robustlab.optimize import descend
from robustlab.seeding import global_rng_seeded
from robustlab.train import TrainConfig, trained_attribute_classifier

__all__ = ["FUSIONS", "ContextFusion", "FusedClassifier", "FusionConfig", "FusionHead", "scene_network"]

HEAD_RECIPE = 1
"""Part of the cache key: bump it when head training changes so stale heads are not reused."""

FUSIONS = ("concat", "object", "scene", "logits")
"""``concat``: the paper's MLP on both feature vectors; ``object``/``scene``: one stream only (ablations);
``logits``: late fusion, the sum of the log-probabilities of an object-only and a scene-only head."""


@dataclass(frozen=True)
class FusionConfig:
    """The scene stream, the head and its training recipe; see :class:`ContextFusion` for each field."""

    fusion: str = "concat"
    scene_arch: str = "smallcnn"
    scene_weights: str | None = None
    scene_classes: int = 365
    scene_steps: int = 150
    hidden: int = 512
    dropout: float = 0.5
    context_weight: float = 0.0
    n_train: int = 4096
    steps: int = 600
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ConfigError(f"context_fusion fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        MODELS.get(self.scene_arch)  # an unknown name fails here, listing the close matches
        for name in ("scene_classes", "scene_steps", "hidden", "n_train", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"context_fusion {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"context_fusion dropout must be in [0, 1), got {self.dropout}")
        if self.context_weight < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("context_fusion context_weight and weight_decay must be >= 0, lr > 0")
        if self.context_weight > 0 and self.fusion == "scene":
            raise ConfigError("context_fusion context_weight penalises object weights; the scene head has none")

    @property
    def streams(self) -> tuple[bool, bool]:
        """Whether the head reads the (object, scene) features."""
        return self.fusion != "scene", self.fusion != "object"


class _Mlp(nn.Sequential):
    """The paper's head: standardized features -> dropout -> ``hidden`` -> ReLU -> dropout -> classes."""

    mean: Tensor
    std: Tensor

    def __init__(self, in_features: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__(
            nn.Dropout(dropout),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))

    def forward(self, features: Tensor) -> Tensor:
        x = (features - self.mean) / self.std
        for layer in self:
            x = layer(x)
        return x


class FusionHead(nn.Module):
    """Class logits from object features ``(B, d_o)`` and scene features ``(B, d_s)``.

    One MLP on the streams the fusion reads (concatenated, object first), or, for ``logits``, one MLP
    per stream whose log-probabilities are added (late fusion: a product of the streams' posteriors,
    trained jointly).

    Example:
        >>> head = FusionHead(FusionConfig(fusion="logits"), 8, 4, num_classes=3)
        >>> head(torch.rand(2, 8), torch.rand(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, config: FusionConfig, object_dim: int, scene_dim: int, *, num_classes: int) -> None:
        super().__init__()
        self.fusion = config.fusion
        self.object_dim = object_dim
        self.num_classes = num_classes
        uses_object, uses_scene = config.streams
        dims = (
            [object_dim, scene_dim]
            if config.fusion == "logits"
            else [object_dim * uses_object + scene_dim * uses_scene]
        )
        self.mlps = nn.ModuleList(_Mlp(dim, config.hidden, num_classes, config.dropout) for dim in dims)

    def inputs(self, object_features: Tensor, scene_features: Tensor) -> list[Tensor]:
        """What each MLP reads."""
        if self.fusion == "concat":
            return [torch.cat([object_features, scene_features], dim=1)]
        return {"object": [object_features], "scene": [scene_features]}.get(
            self.fusion, [object_features, scene_features]
        )

    def forward(self, object_features: Tensor, scene_features: Tensor) -> Tensor:
        inputs = self.inputs(object_features, scene_features)
        outputs: list[Tensor] = [mlp(x) for mlp, x in zip(self._mlps(), inputs, strict=True)]
        if self.fusion == "logits":
            return outputs[0].log_softmax(1) + outputs[1].log_softmax(1)
        return outputs[0]

    def object_weights(self) -> Tensor:
        """The first-layer weights that read object features (none for the scene-only head)."""
        if self.fusion == "scene":
            return torch.zeros(0)
        first = cast(nn.Linear, self._mlps()[0][1])
        return first.weight[:, : self.object_dim]

    def _mlps(self) -> list[_Mlp]:
        return [cast(_Mlp, mlp) for mlp in self.mlps]

    def standardize(self, object_features: Tensor, scene_features: Tensor) -> None:
        """Set each MLP's input mean and std from training features (part of the head's state)."""
        for mlp, x in zip(self._mlps(), self.inputs(object_features, scene_features), strict=True):
            mlp.mean.copy_(x.mean(0))
            mlp.std.copy_(x.std(0).clamp_min(1e-6))


class FusedClassifier(nn.Module):
    """``head(object_stream(x), scene_stream(x))``: the defended classifier over ``[0, 1]`` images.

    Every part is differentiable, so the adaptive (end-to-end) attacker differentiates this very module.
    """

    def __init__(self, object_stream: Encoder, scene_stream: Encoder, head: FusionHead) -> None:
        super().__init__()
        self.object_stream = object_stream
        self.scene_stream = scene_stream
        self.head = head
        self.input_size = object_stream.input_size
        self.num_classes = head.num_classes
        self.name = f"{object_stream.name}+{scene_stream.name}"
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.head(self.object_stream(x), self.scene_stream(x))
        return logits


def scene_network(
    arch: str, weights: str | None, *, num_classes: int, image_size: int, steps: int, progress: bool
) -> Encoder:
    """The scene stream: penultimate features of a scene classifier.

    Without ``weights`` an embedded architecture is trained by robustlab on the synthetic world's
    backgrounds (``synth:target=background``, cached); with ``weights`` the checkpoint (a Places365
    network at full scale: ``.pth``/``.pth.tar`` read with ``weights_only=True``, or safetensors) is loaded
    into ``arch`` with ``num_classes`` outputs.

    Raises:
        ConfigError: a torchvision architecture without a checkpoint (nothing trains it here).
        WeightsUnavailableError: the checkpoint file does not exist.
    """
    if weights is None:
        if MODELS.get(arch).tags["family"] != "embedded":
            raise ConfigError(
                f"context_fusion scene_arch={arch} needs scene_weights=PATH (e.g. a Places365 checkpoint); "
                "only embedded architectures are trained on the synthetic world"
            )
        config = TrainConfig(arch=arch, image_size=image_size, steps=steps)
        return ClassifierFeatures(trained_attribute_classifier(config, "background", progress=progress))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"context_fusion scene_weights: no checkpoint file at {path}")
    # An absolute path: load_model reads names without a separator or known suffix as weight tags.
    model = load_model(arch, weights=str(path.resolve()), num_classes=num_classes, progress=progress)
    return ClassifierFeatures(model)


@DEFENSES.register(
    "context_fusion",
    summary="Object and scene CNN features fused by a learned head (Akumalla, Haney & Bazhenov, 2020).",
)
class ContextFusion(Defense):
    """Contextual fusion: the defended model's penultimate features and a scene network's, fused by an MLP.

    The object stream is the model being defended (:class:`robustlab.encoders.ClassifierFeatures`), the
    scene stream a frozen scene classifier's features (:func:`scene_network`). ``fit`` trains only the
    head, on the train split of the evaluation's training data (whose ``context_p`` sets how much the
    scene says about the class); nothing is trained adversarially.

    Head and regulariser follow the seed's spec, not the paper's code (none is public): an MLP
    ``d_o + d_s -> hidden -> K`` with dropout, trained with cross-entropy. The paper's regulariser that
    "biases the decision toward context" is not specified in what we could read; here it is
    ``context_weight * ||W_object||_F^2`` on the first-layer weights that read object features, so the
    head pays for every unit of object evidence it uses.

    * Differentiable: yes; the adaptive attacker differentiates both streams and the head.
    * Randomized: no (dropout is off at inference).
    * Transfer mode (the paper's setting) attacks the bare object network and scores the fused model.

    Args:
        fusion: ``concat`` (the paper), ``object`` or ``scene`` (one-stream ablations), ``logits``
            (late fusion of per-stream heads).
        scene_arch: architecture of the scene network.
        scene_weights: a scene checkpoint (Places365 at full scale); ``None``: train ``scene_arch`` (an
            embedded net) on the synthetic world's backgrounds.
        scene_classes: outputs of the checkpoint's classifier (365 for Places365).
        scene_steps: training steps of the synthetic scene network.
        hidden: hidden units of the head (the paper's spec: 512).
        dropout: dropout on the head's inputs and hidden layer.
        context_weight: weight of the object-weight penalty (0: plain fusion).
        n_train: training images drawn from the dataset for the head.
        steps: AdamW steps of head training (cosine schedule).
        batch_size: feature vectors per step.
        lr: the head's learning rate.
        weight_decay: AdamW's weight decay on the head.

    References:
        Akumalla, Haney, Bazhenov, "Contextual Fusion For Adversarial Robustness", arXiv 2011.09526, 2020.

    Example:
        >>> ContextFusion(fusion="scene").config()["fusion"]
        'scene'
    """

    randomized = False
    changes_model = True

    hyperparameters = FusionConfig  # the keyword arguments, as ``robustlab list`` and ``--defense-arg`` see them

    def __init__(self, **hyperparameters: Any) -> None:
        self.cfg = FusionConfig(**hyperparameters)
        self._scene: Encoder | None = None
        self._head: FusionHead | None = None

    def config(self) -> dict[str, Any]:
        values = dataclasses.asdict(self.cfg)
        if self.cfg.scene_weights is None:
            del values["scene_classes"]  # the class count of a checkpoint; a trained scene net has the world's
        return values

    def fit(
        self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool = True
    ) -> ContextFusion:
        """Build the scene stream and train the head on ``dataset`` (or load the cached head of an identical run).

        One seed is always drawn from ``generator``, cached or not, so later draws do not depend on the cache.

        Args:
            model: the object network (the classifier being defended), frozen.
            dataset: labelled training images in ``[0, 1]``; its labels are the head's classes.
            generator: source of the seed (image subset, head init, dropout, batches).
            progress: tqdm bars on stderr.
        """
        if not isinstance(model, ImageClassifier):
            raise ConfigError(
                "context_fusion defends an ImageClassifier (its penultimate features are the object stream)"
            )
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        device = next(model.parameters()).device
        scene = scene_network(
            self.cfg.scene_arch,
            self.cfg.scene_weights,
            num_classes=self.cfg.scene_classes,
            image_size=model.input_size,
            steps=self.cfg.scene_steps,
            progress=progress,
        ).to(device)
        objects = ClassifierFeatures(model)
        head = FusionHead(self.cfg, objects.feature_dim, scene.feature_dim, num_classes=dataset.num_classes)
        run = {
            "head": dataclasses.asdict(self.cfg),
            "data": dataset_identity(dataset),
            "object": encoder_fingerprint(objects),
            "scene": encoder_fingerprint(scene),
            "seed": seed,
            "recipe": HEAD_RECIPE,
        }
        path = cache_dir("defenses", "context_fusion") / f"{self.cfg.fusion}-{config_hash(run)}.safetensors"
        if path.is_file():
            head.load_state_dict(load_weights(path))
        else:
            features = _features(objects, scene, dataset, self.cfg.n_train, seed=seed, progress=progress)
            _train_head(head, *features, self.cfg, seed=seed, progress=progress)
            save_weights(path, head.state_dict(), metadata={"run": json.dumps(run, sort_keys=True)})
        self._scene, self._head = scene, head.to(device).eval().requires_grad_(False)
        return self

    def wrap(self, model: nn.Module, *, adaptive: bool = False) -> nn.Module:
        """The fused classifier around ``model`` (the same module for both threat modes: it is differentiable)."""
        if self._scene is None or self._head is None:
            raise WeightsUnavailableError("context_fusion has no head: call fit(model, dataset, generator=...) first")
        if not isinstance(model, ImageClassifier):
            raise ConfigError(
                "context_fusion defends an ImageClassifier (its penultimate features are the object stream)"
            )
        return FusedClassifier(ClassifierFeatures(model), self._scene, self._head)


def _features(
    objects: Encoder, scene: Encoder, dataset: Any, n: int, *, seed: int, progress: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Object features, scene features and labels of ``n`` training images drawn at random, on the CPU."""
    device = next(objects.parameters()).device
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    batches = iterate_batches(dataset, order, 256)
    for _, x, y in tqdm(
        batches, total=-(-len(order) // 256), desc="fusion features", disable=not progress, leave=False
    ):
        with torch.inference_mode():
            x = x.to(device)
            parts.append((objects(x).float().cpu(), scene(x).float().cpu(), y.cpu()))
    object_features, scene_features, labels = (torch.cat(column) for column in zip(*parts, strict=True))
    return object_features, scene_features, labels


def _train_head(
    head: FusionHead,
    object_features: Tensor,
    scene_features: Tensor,
    labels: Tensor,
    config: FusionConfig,
    *,
    seed: int,
    progress: bool,
) -> None:
    """Cross-entropy (+ the context regulariser) with AdamW and a cosine schedule, on the CPU.

    Initialisation and dropout draw from the global RNG, forked and seeded here, so the head is a
    function of ``seed`` alone.
    """
    head.standardize(object_features, scene_features)
    generator = torch.Generator().manual_seed(seed)
    with global_rng_seeded(seed):
        for module in head.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
        head.train()
        bar = tqdm(range(config.steps), desc=f"fusion head ({config.fusion})", disable=not progress, leave=False)
        for _ in bar:
            chunk = torch.randint(len(labels), (config.batch_size,), generator=generator)
            loss = F.cross_entropy(head(object_features[chunk], scene_features[chunk]), labels[chunk])
            if config.context_weight:
                loss = loss + config.context_weight * head.object_weights().square().sum()
            descend(optimizer, loss, schedule)
    head.eval()
