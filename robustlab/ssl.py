"""A self-supervised encoder for the synthetic world (SimCLR), and solo-learn ResNet-18 checkpoints at scale.

A downstream-agnostic attack (AdvEncoder, Zhou et al., ICCV 2023) targets a *pre-trained encoder* that was
never trained on any of the downstream labels. Offline, robustlab trains one itself: SimCLR (Chen et al.,
ICML 2020, arXiv 2002.05709), i.e. the NT-Xent loss between two kornia-augmented views of each image, on
the synthetic world's train split, deterministically and cached like :mod:`robustlab.train`. At scale,
``load_encoder("simclr", weights=PATH)`` loads a solo-learn ResNet-18 checkpoint (CIFAR stem, 512-d
features), the encoders the AdvEncoder paper attacks.

Deviation: by default the colour jitter leaves hue alone (SimCLR jitters it by 0.1-0.2) so that colour
stays decodable, because colour is one of the downstream tasks of the synthetic world (it also halves the
cost of an augmentation on a CPU); ``SSLConfig(hue=...)`` restores it. experiments/RESULTS-advencoder.md
measures what hue jitter, crop scale and training length do to each downstream head.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.allocator import steady_shapes
from robustlab.cache import cache_dir, config_hash, load_weights, save_weights
from robustlab.data.base import iterate_batches
from robustlab.encoders import ENCODERS, Encoder
from robustlab.errors import CheckpointMismatchError, ConfigError
from robustlab.models.classifier import SYNTH_MEAN, SYNTH_STD
from robustlab.models.nets import SmallCNN
from robustlab.optimize import descend, one_cycle
from robustlab.seeding import global_rng_seeded

__all__ = [
    "COMPETENT_VICTIM",
    "SSLConfig",
    "SimCLREncoder",
    "nt_xent",
    "solo_learn_resnet18",
    "train_simclr",
    "trained_simclr",
]

SSL_RECIPE = 1  # bump when training changes what it produces, so cached encoders are not reused
_ADDED_LATER = {("hue", 0.0), ("min_crop", 0.35)}  # config fields that name a cached encoder only when set
SOLO_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # solo-learn's CIFAR normalization
SOLO_CIFAR_STD = (0.2470, 0.2435, 0.2616)


class SimCLREncoder(Encoder):
    """A backbone that maps ``[0, 1]`` images to features, normalizing them itself.

    Shape:
        - x: :math:`(B, 3, S, S)` float in ``[0, 1]``.
        - output: :math:`(B, D)` features (``D = feature_dim``).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_dim: int,
        input_size: int,
        mean: tuple[float, ...] = SYNTH_MEAN,
        std: tuple[float, ...] = SYNTH_STD,
        name: str = "simclr",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.feature_dim = feature_dim
        self.input_size = input_size
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone((x - self.mean) / self.std).flatten(1)


@dataclass(frozen=True)
class SSLConfig:
    """Everything that determines the SimCLR encoder's weights; its hash names the cache file.

    Training draws its batches from a pool of the first ``n_images`` train images, rendered once: rendering
    is the dearest part of a step on a CPU, and augmentations make a few thousand images plenty for this
    world. The default (a SmallCNN backbone of width 16, 64-d features, 300 steps of 128 pairs) trains in a
    few CPU minutes; tests use a narrower, shorter one.
    """

    width: int = 16
    steps: int = 300
    batch_size: int = 128
    n_images: int = 4096
    lr: float = 2e-3
    weight_decay: float = 1e-5
    temperature: float = 0.2
    projection_dim: int = 64
    image_size: int = 32
    data_seed: int = 0
    seed: int = 0
    recipe: int = SSL_RECIPE
    hue: float = 0.0
    min_crop: float = 0.35

    def __post_init__(self) -> None:
        if min(self.width, self.projection_dim) < 1 or self.steps < 20 or min(self.batch_size, self.n_images) < 2:
            # steps >= 20: the one-cycle schedule's 10% warm-up needs at least 2 steps
            raise ConfigError("ssl width and projection_dim must be positive, steps >= 20, batch_size, n_images >= 2")
        if self.temperature <= 0:
            raise ConfigError(f"ssl temperature must be positive, got {self.temperature}")
        if not 0 <= self.hue <= 0.5 or not 0 < self.min_crop <= 1:
            raise ConfigError(f"ssl hue must be in [0, 0.5] and min_crop in (0, 1], got {self.hue}, {self.min_crop}")


def _build(config: SSLConfig) -> tuple[SimCLREncoder, nn.Module]:
    """The encoder and its projection head (used only in training), initialised from ``config.seed``."""
    with global_rng_seeded(config.seed):  # constructors draw from the global RNG
        backbone = SmallCNN(width=config.width).features  # conv stack + global pooling: (B, 4*width)
        dim = 4 * config.width
        projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, config.projection_dim))
    return SimCLREncoder(backbone, feature_dim=dim, input_size=config.image_size), projector


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's normalized-temperature cross-entropy: each view must pick its twin among the 2B - 1 others.

    Example:
        >>> z = torch.eye(4)
        >>> bool(nt_xent(z, z, 0.1) < nt_xent(z, z.roll(1, 0), 0.1))
        True
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.t() / temperature
    similarity.fill_diagonal_(float("-inf"))
    n = len(z1)
    twins = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, twins)


def _augmentation(config: SSLConfig) -> nn.Module:
    """SimCLR's views for small images: crop-and-resize, flip, colour jitter, greyscale."""
    import kornia.augmentation as K

    return nn.Sequential(
        K.RandomResizedCrop((config.image_size, config.image_size), scale=(config.min_crop, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.4, config.hue, p=0.8),
        K.RandomGrayscale(p=0.2),
    )


def train_simclr(config: SSLConfig, *, progress: bool = True) -> SimCLREncoder:
    """Train a SimCLR encoder on the synthetic world's train split (AdamW, one-cycle), deterministically.

    kornia draws its augmentations from the global RNG, so training runs inside a forked RNG seeded by
    ``config.seed``: the weights are a function of the config alone and the caller's RNG is untouched.
    """
    from robustlab.data.synth import SynthConfig, SynthDataset

    encoder, projector = _build(config)
    data = SynthDataset("train", config=SynthConfig(image_size=config.image_size, seed=config.data_seed))
    pool = torch.cat([x for _, x, _ in iterate_batches(data, torch.arange(min(config.n_images, len(data))), 512)])
    augment = _augmentation(config)
    parameters = [*encoder.parameters(), *projector.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    schedule = one_cycle(optimizer, max_lr=config.lr, steps=config.steps, warmup=0.1)
    generator = torch.Generator().manual_seed(config.seed)
    encoder.train()
    projector.train()
    with global_rng_seeded(config.seed), steady_shapes():
        bar = tqdm(range(config.steps), desc="training simclr", disable=not progress, leave=False, dynamic_ncols=True)
        for _ in bar:
            x = pool[torch.randint(len(pool), (config.batch_size,), generator=generator)]
            loss = nt_xent(projector(encoder(augment(x))), projector(encoder(augment(x))), config.temperature)
            descend(optimizer, loss, schedule)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    encoder.eval().requires_grad_(False)
    return encoder


def trained_simclr(config: SSLConfig = SSLConfig(), *, progress: bool = True) -> SimCLREncoder:
    """The SimCLR encoder of ``config``: trained on first use, loaded from the cache afterwards."""
    key = {k: v for k, v in asdict(config).items() if (k, v) not in _ADDED_LATER}
    path = cache_dir("encoders") / f"simclr-{config_hash(key)}.safetensors"
    if path.is_file():
        encoder, _ = _build(config)
        encoder.load_state_dict(load_weights(path))
        return encoder.eval().requires_grad_(False)
    encoder = train_simclr(config, progress=progress)
    save_weights(path, encoder.state_dict(), metadata={"config": json.dumps(asdict(config))})
    return encoder


def solo_learn_resnet18(path: Path) -> SimCLREncoder:
    """A solo-learn ResNet-18 (CIFAR stem: 3x3 conv, no max-pool; 512-d features) from its checkpoint.

    solo-learn stores the network under ``backbone.`` inside a Lightning ``state_dict``; only those
    tensors are read (``weights_only=True``, never pickle), so any of its SSL methods loads alike.

    Raises:
        WeightsUnavailableError: no file at ``path``.
        CheckpointMismatchError: the file is not a ResNet-18 backbone.
    """
    import torchvision

    from robustlab.models.checkpoints import load_state_dict_file

    state = load_state_dict_file(path)
    backbone_state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    backbone_state = {k: v for k, v in backbone_state.items() if not k.startswith("fc.")}
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    missing = sorted(set(net.state_dict()) - set(backbone_state))
    if missing or not backbone_state:
        raise CheckpointMismatchError(
            f"{path} is not a solo-learn ResNet-18 checkpoint: {len(missing)} backbone tensors missing "
            f"({', '.join(missing[:3])}...)"
        )
    try:
        net.load_state_dict(backbone_state, strict=True)
    except RuntimeError as error:
        raise CheckpointMismatchError(f"{path} does not fit a CIFAR ResNet-18: {str(error).splitlines()[0]}") from None
    encoder = SimCLREncoder(
        net, feature_dim=512, input_size=32, mean=SOLO_CIFAR_MEAN, std=SOLO_CIFAR_STD, name=path.stem
    )
    return encoder.eval().requires_grad_(False)


COMPETENT_VICTIM = SSLConfig(width=32, steps=4800, lr=6e-3)
"""The victim AdvEncoder needs: every downstream head >= 0.80 clean (shape .86-.88 over two seeds, where the
default encoder's is .21; experiments/RESULTS-advencoder.md), at about 48 CPU minutes of training, once."""


@ENCODERS.register(
    "simclr", summary="SimCLR encoder trained on the synthetic world (cached); --weights PATH: a solo-learn ResNet-18."
)
def _simclr(*, weights: str | None = None, progress: bool = True) -> Encoder:
    if weights in (None, "synth"):
        return trained_simclr(progress=progress)
    return solo_learn_resnet18(Path(weights).expanduser())


@ENCODERS.register(
    "simclr-w32",
    summary="A competent SimCLR victim (width 32, 4800 steps: every head >= 0.80); ~50 CPU min to train once.",
)
def _simclr_w32(*, weights: str | None = None, progress: bool = True) -> Encoder:
    if weights not in (None, "synth"):
        raise ConfigError("simclr-w32 is trained by robustlab (--weights synth); load a checkpoint with --model simclr")
    return trained_simclr(COMPETENT_VICTIM, progress=progress)
