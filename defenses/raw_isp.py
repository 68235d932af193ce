"""All You Need is RAW (Zhang, Dong, Heide, ECCV 2022): a learned RGB -> RAW -> RGB camera pipeline as preprocessing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from kornia.metrics import ssim
from robustlab.defenses._raw_isp_nets import MiniPyNet, RgbToRawNet
from robustlab.defenses.camera import linear_to_srgb, make_raw_pair, other_camera_rendering
from torch import Tensor, nn
from tqdm import tqdm

from robustlab.allocator import steady_shapes
from robustlab.cache import cache_dir, config_hash, load_weights, save_weights
from robustlab.data.base import iterate_batches
from robustlab.defense import DEFENSES, PreprocessingDefense
from robustlab.errors import CheckpointMismatchError, ConfigError, WeightsUnavailableError
from robustlab.optimize import descend
from robustlab.seeding import global_rng_seeded

__all__ = ["TRAINING_VERSION", "MiniPyNet", "RawIsp", "RawIspConfig", "RgbToRawNet", "dataset_identity"]

TRAINING_VERSION = 1
"""Part of the cache key: bump it when the training procedure changes so stale weights are not reused."""


G_TARGETS = ("input", "other_camera")
"""What G learns to render: the image F unprocessed, or :func:`other_camera_rendering` of it."""


@dataclass(frozen=True)
class RawIspConfig:
    """Architecture and training hyperparameters of :class:`RawIsp`; see its docstring for each field."""

    f_width: int = 16
    g_width: int = 8
    levels: int = 3
    f_steps: int = 3000
    g_steps: int = 4800
    batch_size: int = 16
    f_lr: float = 3e-3
    g_lr: float = 2e-3
    input_noise_std: float = 0.1
    ssim_weight: float = 0.15
    sensor_noise: bool = True
    n_images: int = 4096
    patch_size: int = 32
    skip: bool = True
    g_target: str = "input"

    def __post_init__(self) -> None:
        if self.g_target not in G_TARGETS:
            raise ConfigError(f"raw_isp g_target must be one of {', '.join(G_TARGETS)}, got {self.g_target!r}")
        positive = ("f_width", "g_width", "levels", "f_steps", "g_steps", "batch_size", "n_images")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"raw_isp {name} must be >= 1, got {getattr(self, name)}")
        if self.f_lr <= 0 or self.g_lr <= 0:
            raise ConfigError(f"raw_isp learning rates must be > 0, got f_lr={self.f_lr}, g_lr={self.g_lr}")
        if self.input_noise_std < 0 or self.ssim_weight < 0:
            raise ConfigError("raw_isp input_noise_std and ssim_weight must be >= 0")
        if self.patch_size < 2**self.levels:
            raise ConfigError(f"raw_isp patch_size must be >= 2**levels = {2**self.levels}, got {self.patch_size}")


@dataclass(frozen=True)
class _TrainingRun:
    """Everything that determines the trained weights: the cache key."""

    config: RawIspConfig
    dataset: str
    seed: int
    version: int = TRAINING_VERSION


@DEFENSES.register(
    "raw_isp", summary="Learned RGB->RAW->RGB camera pipeline G(F(x)) before the classifier (Zhang et al., ECCV 2022)."
)
class RawIsp(PreprocessingDefense):
    """All You Need is RAW: map images to simulated Bayer RAW with a CNN F, then back with a learned ISP G.

    The defense claims that the round trip through RAW space removes adversarial patterns while a
    model-agnostic preprocessor keeps clean accuracy; it is trained without adversarial examples and
    without the classifier. ``transform(x) = clamp(G(F(x)), 0, 1)``, as in the official evaluation
    (which uses only G∘F, not the fixed ISP S).

    * Differentiable: yes, ``G∘F`` is an ordinary CNN, so adaptive attacks differentiate it directly
      and :meth:`surrogate` is never needed.
    * Randomized: no; ``transform`` is deterministic (noise is used only in training).
    * ``fit`` trains F with the paper's noise-augmented loss
      ``MSE(F(x), raw) + MSE(F(x + a n), raw)`` (``n ~ N(0, input_noise_std^2)`` per pixel,
      ``a ~ N(0, 1)`` per image; the squared errors are taken after the sRGB curve, see
      ``_train_encoder``), then G coarse to fine as PyNET does: one stage per level from the
      coarsest, each with the MSE of that level's output against the area-downsampled image, plus
      ``ssim_weight * (1 - SSIM)`` at level 1 (the paper uses MS-SSIM and a VGG content loss; 32x32
      images are too small for MS-SSIM and nothing is downloaded). The RAW is simulated from the
      dataset's images by :func:`robustlab.defenses.camera.make_raw_pair` (random camera per image;
      the F target is noise-free, G's input has shot/read noise when ``sensor_noise``). Weights are
      cached as safetensors keyed by the config, the dataset's identity and a seed drawn from the
      generator, so a second ``fit`` loads instead of training.

    Input ``(B, 3, H, W)`` in ``[0, 1]``, output of the same shape in ``[0, 1]``; any ``H, W >= 2**levels``.

    Args:
        f_width: hidden channels of F (the paper: 64; 16 trains on a CPU in minutes).
        g_width: channels of G's full-resolution level, doubled per level below.
        levels: pyramid levels of G (the paper's PyNET: 5).
        f_steps: Adam steps for F.
        g_steps: Adam steps for G in all; level 1 gets half, the coarser levels share the rest.
        batch_size: images per step.
        f_lr: F's learning rate (the paper: 1e-3), cosine-decayed to zero.
        g_lr: G's learning rate at the start of each stage, cosine-decayed to zero.
        input_noise_std: std of the per-pixel noise in F's augmented loss term (the paper: 0.1).
        ssim_weight: weight of ``1 - SSIM`` in level 1's loss.
        sensor_noise: add shot/read noise to G's input RAW during training.
        n_images: images drawn from the dataset (without replacement) for training.
        patch_size: side of the random crop taken from each image (smaller images are used whole).
        skip: G's linear 1x1 colour map from its input to every output (``False``: the ablation).
        g_target: G's training target: ``input``, the image F unprocessed (an autoencoder), or
            ``other_camera``, the same image as another fixed camera renders it (the paper's RAW->DSLR gap).

    References:
        Zhang, Dong, Heide, "All You Need is RAW: Defending Against Adversarial Attacks with Camera
        Image Pipelines", ECCV 2022, https://arxiv.org/abs/2112.09219.

    Example:
        >>> defense = RawIsp.tiny()
        >>> defense.config()["g_width"]
        6
    """

    differentiable = True
    randomized = False

    hyperparameters = RawIspConfig  # the keyword arguments, as ``robustlab list`` and ``--defense-arg`` see them

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__()
        self.cfg = RawIspConfig(**hyperparameters)
        self.encoder, self.isp = _build_networks(self.cfg, seed=0)
        self.weights_path: Path | None = None

    @classmethod
    def tiny(cls) -> RawIsp:
        """A configuration for tests: a quarter of the default's training, a narrower G (about 25 dB)."""
        return cls(g_width=6, f_steps=800, g_steps=600, n_images=512)

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)

    def transform(self, x: Tensor) -> Tensor:
        """Return ``clamp(G(F(x)), 0, 1)``: the defended image, same shape as ``x``.

        Raises:
            WeightsUnavailableError: neither :meth:`fit` nor :meth:`load` has been called.
        """
        if self.weights_path is None:
            raise WeightsUnavailableError("raw_isp has no weights: call fit(model, dataset, generator=...) first")
        return self.isp(self.encoder(x)).clamp(0, 1)

    def fit(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool = True) -> RawIsp:
        """Train F then G on ``dataset`` (or load the cached weights of an identical run).

        One seed is always drawn from ``generator``, whether or not the weights are cached, so the
        caller's later draws do not depend on the state of the cache. Training runs on the device of
        this module's parameters; only the private generator seeded from that seed is used.

        Args:
            model: unused: the defense is trained without the classifier.
            dataset: images in ``[0, 1]`` following the robustlab dataset protocol.
            generator: source of the seed.
            progress: show a tqdm bar on stderr.

        Returns:
            ``self``, in eval mode with frozen parameters.
        """
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        run = _TrainingRun(self.cfg, dataset_identity(dataset), seed)
        path = cache_dir("defenses", "raw_isp") / f"{config_hash(run)}.safetensors"
        if path.exists():
            return self.load(path)
        self._train(dataset, seed, progress=progress)
        save_weights(path, self.state_dict(), metadata={"run": json.dumps(dataclasses.asdict(run), sort_keys=True)})
        return self._ready(path)  # the trained weights, even when a full disk kept them out of the cache

    def load(self, path: Path) -> RawIsp:
        """Load weights saved by :meth:`fit` (strictly: every key and shape must match this config).

        Raises:
            CheckpointMismatchError: the file was written for another architecture.
        """
        state = load_weights(path)
        own = self.state_dict()
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        resized = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
        if missing or unexpected or resized:
            raise CheckpointMismatchError(
                f"{path} does not fit raw_isp {self.cfg}: missing {missing}, unexpected {unexpected}, resized {resized}"
            )
        self.load_state_dict(state)
        return self._ready(path)

    def _ready(self, path: Path) -> RawIsp:
        """Frozen for use, remembering ``path``: the cache file of these weights."""
        self.weights_path = path
        self.zero_grad(set_to_none=True)  # training leaves the last step's gradients behind
        self.requires_grad_(False)
        return self.eval()

    def _train(self, dataset: Any, seed: int, *, progress: bool) -> None:
        device = next(self.parameters()).device
        encoder, isp = _build_networks(self.cfg, seed=seed)
        self.encoder.load_state_dict(encoder.state_dict())
        self.isp.load_state_dict(isp.state_dict())
        self.train().requires_grad_(True)
        generator = torch.Generator(device=device).manual_seed(seed)
        pool = _load_pool(dataset, self.cfg, generator=generator).to(device)
        total = self.cfg.f_steps + self.cfg.g_steps
        bar = tqdm(total=total, desc="training raw_isp (first use, then cached)", file=sys.stderr, disable=not progress)
        with bar, steady_shapes():
            _train_encoder(self.encoder, pool, self.cfg, generator=generator, bar=bar)
            _train_isp(self.isp, pool, self.cfg, generator=generator, bar=bar)


def _build_networks(config: RawIspConfig, *, seed: int) -> tuple[RgbToRawNet, MiniPyNet]:
    """Initialise F and G on the CPU from ``seed``, leaving the global RNG as it was."""
    with global_rng_seeded(seed):
        return RgbToRawNet(width=config.f_width), MiniPyNet(
            levels=config.levels, width=config.g_width, skip=config.skip
        )


def dataset_identity(dataset: Any) -> str:
    """A string that changes when the training data would: class, length, split/config, and a content probe.

    A dataset may set ``identity`` (a string) to take over. Otherwise the probe hashes the first
    and last images, which catches datasets of the same class and size with different contents.
    """
    explicit = getattr(dataset, "identity", None)
    if isinstance(explicit, str):
        return explicit
    parts = [f"{type(dataset).__module__}.{type(dataset).__qualname__}", f"len={len(dataset)}"]
    for name in ("split", "config", "root"):
        value = getattr(dataset, name, None)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            parts.append(f"{name}={json.dumps(dataclasses.asdict(value), sort_keys=True, default=str)}")
        elif isinstance(value, (str, int, float, Path)):
            parts.append(f"{name}={value}")
    probe = sorted({0, len(dataset) - 1})
    _, x, _ = next(iterate_batches(dataset, probe, len(probe)))
    parts.append(f"probe={hashlib.sha256(x.float().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]}")
    return ";".join(parts)


def _load_pool(dataset: Any, config: RawIspConfig, *, generator: torch.Generator) -> Tensor:
    """Draw ``n_images`` images without replacement and take one random ``patch_size`` crop of each."""
    order = torch.randperm(len(dataset), generator=generator, device=generator.device)[: config.n_images].cpu()
    crops = []
    for _, x, _ in iterate_batches(dataset, order, 256):
        height, width = x.shape[-2:]
        size_h, size_w = min(height, config.patch_size), min(width, config.patch_size)
        tops = torch.randint(height - size_h + 1, (len(x),), generator=generator, device=generator.device).tolist()
        lefts = torch.randint(width - size_w + 1, (len(x),), generator=generator, device=generator.device).tolist()
        crops += [img[:, t : t + size_h, s : s + size_w] for img, t, s in zip(x, tops, lefts, strict=True)]
    return torch.stack(crops).float()


def _batches(pool: Tensor, config: RawIspConfig, steps: int, generator: torch.Generator) -> Iterator[Tensor]:
    """``steps`` batches drawn uniformly (with replacement across batches) from the pool."""
    for _ in range(steps):
        yield pool[torch.randint(len(pool), (config.batch_size,), generator=generator, device=generator.device)]


def _cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
    )


def _train_encoder(
    encoder: RgbToRawNet, pool: Tensor, config: RawIspConfig, *, generator: torch.Generator, bar: tqdm[Any]
) -> None:
    """F: the paper's noise-augmented MSE to the clean simulated RAW, measured after the sRGB curve.

    The curve is how G reads RAW (see :class:`MiniPyNet`). In linear RAW a dark pixel's error
    counts about ten times less than it costs after the ISP's gamma, and F fits the dark tones
    badly: measured through the exact ISP S, about 27 dB with the plain MSE against 29 dB.
    """
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.f_lr)
    schedule = _cosine(optimizer, config.f_steps)
    for x in _batches(pool, config, config.f_steps, generator):
        raw = make_raw_pair(x, generator=generator, noise=False).raw
        amplitude = torch.randn(len(x), 1, 1, 1, generator=generator, device=generator.device)
        noise = config.input_noise_std * torch.randn(x.shape, generator=generator, device=generator.device)
        target = linear_to_srgb(raw)
        loss = F.mse_loss(linear_to_srgb(encoder(x)), target)
        loss = loss + F.mse_loss(linear_to_srgb(encoder(x + amplitude * noise)), target)
        descend(optimizer, loss, schedule)
        bar.update()


def _train_isp(
    isp: MiniPyNet, pool: Tensor, config: RawIspConfig, *, generator: torch.Generator, bar: tqdm[Any]
) -> None:
    """G: PyNET's coarse-to-fine schedule, one stage (fresh Adam, cosine decay) per level."""
    for level, steps in zip(range(config.levels, 0, -1), _stage_steps(config), strict=True):
        optimizer = torch.optim.Adam(isp.parameters(), lr=config.g_lr)
        schedule = _cosine(optimizer, steps)
        for x in _batches(pool, config, steps, generator):
            raw = make_raw_pair(x, generator=generator, noise=config.sensor_noise).raw
            target = other_camera_rendering(x) if config.g_target == "other_camera" else x
            descend(optimizer, _level_loss(isp.pyramid(raw, finest=level)[-1], target, level, config), schedule)
            bar.update()


def _stage_steps(config: RawIspConfig) -> list[int]:
    """Steps per G stage, coarsest first: level 1 (what inference uses) gets half, the others share the rest."""
    if config.levels == 1:
        return [config.g_steps]
    coarse = config.g_steps // 2 // (config.levels - 1)
    return [coarse] * (config.levels - 1) + [config.g_steps - coarse * (config.levels - 1)]


def _level_loss(output: Tensor, x: Tensor, level: int, config: RawIspConfig) -> Tensor:
    """MSE to the image area-downsampled to the level's size, plus the SSIM term at level 1."""
    target = F.adaptive_avg_pool2d(x, (output.shape[-2], output.shape[-1]))
    loss = F.mse_loss(output, target)
    if level == 1 and config.ssim_weight > 0:
        loss = loss + config.ssim_weight * (1 - ssim(output, target, window_size=7).mean())
    return loss
