"""NMTune (Chen et al., ICLR 2024): black-box tuning of a noisily pre-trained encoder's frozen features.

"Understanding and Mitigating the Label Noise in Pre-training on Downstream Tasks",
https://arxiv.org/abs/2309.17002. Label noise in pre-training reshapes the feature space; NMTune
reshapes it back with a small residual MLP on the frozen features, trained with the downstream
cross-entropy plus three regularisers, without ever touching the encoder (it may sit behind an API).

It is not an adversarial defense: it is registered as one so that ``robustlab eval --defense nmtune``
scores the tuned classifier (white-box through encoder and MLP, or with Square through its scores),
and no robustness claim should be read from its OOD gains.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from robustlab.defenses.raw_isp import dataset_identity
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.cache import cache_dir, config_hash, load_weights, save_weights
from robustlab.data.base import ImageDataset, iterate_batches
from robustlab.defense import DEFENSES, Defense
from robustlab.encoders import ClassifierFeatures, Encoder, encoder_fingerprint
from robustlab.errors import ConfigError, WeightsUnavailableError
from robustlab.models.loading import ImageClassifier
from robustlab.optimize import descend
from robustlab.seeding import global_rng_seeded
from robustlab.spectral import spectral_summary

__all__ = [
    "NMTUNE_RECIPE",
    "NMTune",
    "NMTuneConfig",
    "NMTuned",
    "ResidualMLP",
    "consistency_loss",
    "covariance_penalty",
    "nmtune_loss",
    "top_singular_ratio",
    "train_nmtune",
    "tuned_spectra",
    "view_features",
]

NMTUNE_RECIPE = 2
"""Part of the cache key: bump it when training changes what it produces, so stale weights are not reused."""


@dataclass(frozen=True)
class NMTuneConfig:
    """The tuner and its training recipe; with the data, the encoder and a seed, what fixes the weights.

    Defaults are the official README commands: ``mlp_after_ratio=4``, one hidden layer, residual scale
    initialised to 1, loss weights ``(mse, cov, svd) = (1.0, 0.04, 0.001)``, top-5 singular values,
    AdamW (lr 1e-3, weight decay 1e-4, cosine to zero) for 30 epochs of batch 64. All three weights at
    0 give the paper's "MLP" baseline: the same residual MLP trained with cross-entropy only.

    ``n_train`` caps the training images; ``views`` augmented views (a random horizontal flip and a
    random crop of the image padded by ``shift`` pixels) are drawn per image, and every epoch pairs two
    distinct ones of each image as its weak and strong view: the official code re-augments every epoch,
    which is what the consistency term feeds on, and ``views`` stored views stand in for that at
    ``views`` encoder queries per image (an API's cost), not two per image per epoch.
    """

    ratio: int = 4
    res_scale_init: float = 1.0
    mse_weight: float = 1.0
    cov_weight: float = 0.04
    svd_weight: float = 0.001
    top_k: int = 5
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    n_train: int = 4096
    shift: int = 2
    views: int = 10
    recipe: int = field(default=NMTUNE_RECIPE, init=False)

    def __post_init__(self) -> None:
        for name in ("ratio", "top_k", "epochs", "n_train"):
            if getattr(self, name) < 1:
                raise ConfigError(f"nmtune {name} must be >= 1, got {getattr(self, name)}")
        if self.views < 2:
            raise ConfigError(f"nmtune views must be >= 2 (a weak and a strong one), got {self.views}")
        if self.batch_size < 2:
            raise ConfigError(f"nmtune batch_size must be >= 2 (batch norm), got {self.batch_size}")
        if min(self.mse_weight, self.cov_weight, self.svd_weight, self.weight_decay, self.shift) < 0 or self.lr <= 0:
            raise ConfigError("nmtune loss weights, weight_decay and shift must be >= 0, and lr > 0")


class ResidualMLP(nn.Module):
    """``z = s * MLP(f) + f``: ``MLP = Linear(D, rD) -> BatchNorm1d -> ReLU -> Linear(rD, D)``, ``s`` learnable.

    The official ``ImageEncoderMLP`` with one hidden layer. With ``s = 0`` the features pass unchanged.

    Example:
        >>> tuner = ResidualMLP(8, scale_init=0.0).eval()
        >>> f = torch.randn(4, 8)
        >>> torch.equal(tuner(f), f)
        True
    """

    def __init__(self, dim: int, *, ratio: int = 4, scale_init: float = 1.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, ratio * dim), nn.BatchNorm1d(ratio * dim), nn.ReLU(), nn.Linear(ratio * dim, dim)
        )
        self.scale = nn.Parameter(torch.full((1, dim), float(scale_init)))

    def forward(self, features: Tensor) -> Tensor:
        tuned: Tensor = self.scale * self.mlp(features) + features
        return tuned


def _linear_head(dim: int, num_classes: int) -> nn.Linear:
    """The official ``ClassificationHead``: kaiming-uniform weights, zero bias, no feature normalisation."""
    head = nn.Linear(dim, num_classes)
    nn.init.kaiming_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def consistency_loss(tuned: Tensor, frozen: Tensor) -> Tensor:
    """MSE between L2-normalised tuned features and the (detached) frozen features they started from."""
    return F.mse_loss(F.normalize(tuned, dim=1), F.normalize(frozen.detach(), dim=1))


def covariance_penalty(z: Tensor) -> Tensor:
    """``(1/D) sum_{i != j} C_ij^2`` of the feature covariance ``C`` (centred over samples): decorrelation.

    Example:
        >>> float(covariance_penalty(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])))
        0.0
    """
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (len(z) - 1)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / z.shape[1]


def top_singular_ratio(z: Tensor, k: int = 5) -> Tensor:
    """Mean of the ``k`` largest singular values of the *uncentred* ``z``, each over their sum.

    NMTune subtracts this (times its weight) from the loss, raising the share of the top directions.

    Example:
        >>> float(top_singular_ratio(torch.diag(torch.tensor([3.0, 1.0])), k=1))
        0.75
    """
    values = torch.linalg.svdvals(z)
    ratio: Tensor = (values / values.sum())[:k].mean()
    return ratio


def nmtune_loss(
    tuner: ResidualMLP, head: nn.Module, weak: Tensor, strong: Tensor, labels: Tensor, config: NMTuneConfig
) -> tuple[Tensor, dict[str, float]]:
    """The training loss of one batch of two views' frozen features, and its parts (as floats).

    ``CE(head([z_w; z_s]), [y; y]) + mse * MSE(norm(z_s), norm(f_w)) + cov * C(Z) - svd * R_k(Z)`` with
    ``Z = [z_w; z_s]`` the tuned features of both views (the official ``nml_tune.py``). Terms whose weight
    is 0 are not computed.
    """
    z = tuner(torch.cat([weak, strong]))
    z_strong = z.chunk(2)[1]
    loss = F.cross_entropy(head(z), torch.cat([labels, labels]))
    parts = {"ce": float(loss.detach())}
    if config.mse_weight:
        mse = consistency_loss(z_strong, weak)
        loss = loss + config.mse_weight * mse
        parts["mse"] = float(mse.detach())
    if config.svd_weight:
        ratio = top_singular_ratio(z, config.top_k)
        loss = loss - config.svd_weight * ratio
        parts["svd"] = float(ratio.detach())
    if config.cov_weight:
        cov = covariance_penalty(z)
        loss = loss + config.cov_weight * cov
        parts["cov"] = float(cov.detach())
    return loss, parts


def _augment(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """A random horizontal flip and a random translation of up to ``shift`` pixels (reflect padding), per image."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
    if shift == 0:
        return x
    size_h, size_w = x.shape[2:]
    padded = F.pad(x, (shift, shift, shift, shift), mode="reflect")
    offsets = torch.randint(2 * shift + 1, (len(x), 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + size_h, dx : dx + size_w] for i, (dy, dx) in enumerate(offsets)])


def view_features(
    encoder: nn.Module,
    dataset: ImageDataset,
    n: int,
    *,
    views: int,
    shift: int,
    generator: torch.Generator,
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Frozen features of ``views`` independently augmented views of the first ``n`` images, and their labels.

    The encoder is only queried (under ``inference_mode``), as through an API, ``views`` times per image.
    Returns float32 CPU features ``(views, n, D)`` and int64 labels ``(n,)``.
    """
    device = next((t.device for t in [*encoder.parameters(), *encoder.buffers()]), torch.device("cpu"))
    features, labels = [], []
    indices = torch.arange(min(n, len(dataset)))
    batches = iterate_batches(dataset, indices, batch_size)
    total = -(-len(indices) // batch_size)
    for _, x, y in tqdm(batches, total=total, desc="nmtune features", disable=not progress, leave=False):
        with torch.inference_mode():
            features.append(
                torch.stack([encoder(_augment(x, shift, generator).to(device)).float().cpu() for _ in range(views)])
            )
        labels.append(y)
    return torch.cat(features, dim=1), torch.cat(labels)


def _view_pairs(views: int, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two distinct view indices per image, ``(n,)`` each: the epoch's weak and strong view."""
    weak = torch.randint(views, (n,), generator=generator)
    return weak, (weak + 1 + torch.randint(views - 1, (n,), generator=generator)) % views


def train_nmtune(
    views: Tensor,
    labels: Tensor,
    num_classes: int,
    config: NMTuneConfig,
    *,
    seed: int,
    progress: bool = False,
) -> tuple[ResidualMLP, nn.Linear]:
    """Train the residual MLP and a linear head on stored views' frozen features; returned in eval mode, frozen.

    ``views`` ``(K, n, D)`` (:func:`view_features`): every epoch pairs two distinct views of each image, so
    the consistency term sees a new pair of augmentations each epoch, as the official code's re-augmentation
    gives it, from ``K`` encoder queries per image.
    """
    n = views.shape[1]
    if views.shape[0] < 2:
        raise ConfigError(f"nmtune needs at least 2 views per image, got {views.shape[0]}")
    if n < config.batch_size:
        raise ConfigError(f"nmtune needs at least batch_size={config.batch_size} training images, got {n}")
    generator = torch.Generator().manual_seed(seed)
    with global_rng_seeded(seed):  # layer init draws from the global RNG: make it a function of the seed
        tuner = ResidualMLP(views.shape[2], ratio=config.ratio, scale_init=config.res_scale_init)
        head = _linear_head(views.shape[2], num_classes)
    device = views.device
    tuner, head = tuner.to(device), head.to(device)
    params = [*tuner.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = n // config.batch_size
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs * per_epoch)
    tuner.train()
    head.train()
    bar = tqdm(
        range(config.epochs),
        desc="training nmtune's MLP (--defense nmtune: first use, then cached)",
        disable=not progress,
        leave=False,
    )
    for _ in bar:
        weak_view, strong_view = (index.to(device) for index in _view_pairs(len(views), n, generator))
        order = torch.randperm(n, generator=generator).to(device)
        for step in range(per_epoch):
            chunk = order[step * config.batch_size : (step + 1) * config.batch_size]
            weak, strong = views[weak_view[chunk], chunk], views[strong_view[chunk], chunk]
            loss, parts = nmtune_loss(tuner, head, weak, strong, labels[chunk], config)
            descend(optimizer, loss, schedule)
        bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()}, refresh=False)
    return tuner.eval().requires_grad_(False), head.eval().requires_grad_(False)


def tuned_spectra(tuner: nn.Module, features: Tensor) -> dict[str, float]:
    """SVE and LSVR (:mod:`robustlab.spectral`) of ``features`` before and after ``tuner``."""
    with torch.inference_mode():
        after = tuner(features)
    before_summary, after_summary = spectral_summary(features), spectral_summary(after)
    return {f"{key}_before": value for key, value in before_summary.items()} | {
        f"{key}_after": value for key, value in after_summary.items()
    }


class NMTuned(nn.Module):
    """``head(tuner(features(x)))``: the tuned classifier over ``[0, 1]`` images (the encoder untouched)."""

    def __init__(self, features: Encoder, tuner: ResidualMLP, head: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.tuner = tuner
        self.head = head
        self.num_classes = head.out_features
        self.input_size = features.input_size
        self.name = f"{features.name}+nmtune"
        self.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.head(self.tuner(self.features(x)))
        return logits


@DEFENSES.register(
    "nmtune", summary="NMTune: residual MLP + head tuned on frozen features (Chen et al., ICLR 2024); not robustness."
)
class NMTune(Defense):
    """Tunes a residual MLP and a linear head on the frozen penultimate features of the classifier.

    ``fit`` queries the classifier's features (:class:`robustlab.encoders.ClassifierFeatures`), or an encoder's
    own (``--task downstream``, where NMTune replaces each head), for
    ``views`` augmented views of the training images and trains :func:`train_nmtune` on them; the weights are
    cached as safetensors keyed by the config, the encoder's weights fingerprint, the training data and
    a seed drawn from the generator. ``wrap(model)`` returns :class:`NMTuned`: features -> residual MLP
    -> head, deterministic and differentiable, so the adaptive attacker needs neither BPDA nor EOT;
    transfer mode attacks the noisily pre-trained classifier itself. The encoder is never modified.

    Args: the fields of :class:`NMTuneConfig`.
    """

    changes_model = True
    tunes_encoders = True

    hyperparameters = NMTuneConfig  # the keyword arguments, as ``robustlab list`` and ``--defense-arg`` see them

    def __init__(self, **hyperparameters: Any) -> None:
        self.cfg = NMTuneConfig(**hyperparameters)
        self._tuned: tuple[ResidualMLP, nn.Linear] | None = None
        self._fingerprint = ""

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def fit(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool = True) -> NMTune:
        """Tune on ``dataset`` (its labels, its classes) over ``model``'s frozen features, or load the cache.

        One seed is always drawn from ``generator``, cached or not, so the caller's later draws do not
        depend on the state of the cache.
        """
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        features = _features(model)
        self._fingerprint = encoder_fingerprint(features)
        key = {
            "config": asdict(self.cfg),
            "encoder": self._fingerprint,
            "data": _data_identity(dataset, self.cfg.n_train),
            "seed": seed,
        }
        path = cache_dir("defenses", "nmtune") / f"{features.name}-{config_hash(key)}.safetensors"
        dim, classes = features.feature_dim, dataset.num_classes
        if path.is_file():
            tuner = ResidualMLP(dim, ratio=self.cfg.ratio, scale_init=self.cfg.res_scale_init)
            head = nn.Linear(dim, classes)
            state = load_weights(path)
            tuner.load_state_dict({k.removeprefix("tuner."): v for k, v in state.items() if k.startswith("tuner.")})
            head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
        else:
            views = view_features(
                features,
                dataset,
                self.cfg.n_train,
                views=self.cfg.views,
                shift=self.cfg.shift,
                generator=torch.Generator().manual_seed(seed),
                progress=progress,
            )
            tuner, head = train_nmtune(*views, classes, self.cfg, seed=seed, progress=progress)
            state = {f"tuner.{k}": v for k, v in tuner.state_dict().items()}
            state |= {f"head.{k}": v for k, v in head.state_dict().items()}
            save_weights(path, state, metadata={"key": json.dumps(key)})
        device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
        self._tuned = (tuner.to(device).eval().requires_grad_(False), head.to(device).eval().requires_grad_(False))
        return self

    def wrap(self, model: nn.Module, *, adaptive: bool = False) -> nn.Module:
        if self._tuned is None:
            raise WeightsUnavailableError("nmtune has no weights: call fit(model, dataset, generator=...) first")
        features = _features(model)
        if encoder_fingerprint(features) != self._fingerprint:
            raise ConfigError("nmtune was fitted on another model's features; fit it on this model first")
        return NMTuned(features, *self._tuned)


def _features(model: nn.Module) -> Encoder:
    """What NMTune tunes over: an encoder as it is (``--task downstream``), a classifier's penultimate features."""
    return model if isinstance(model, Encoder) else ClassifierFeatures(cast(ImageClassifier, model))


def _data_identity(dataset: Any, n: int) -> str:
    """The dataset's identity plus a hash of the labels tuned on (the identity alone does not name the target)."""
    labels = torch.cat([y for _, _, y in iterate_batches(dataset, torch.arange(min(n, len(dataset))), 1024)])
    return f"{dataset_identity(dataset)};labels={hashlib.sha256(labels.numpy().tobytes()).hexdigest()[:16]}"
