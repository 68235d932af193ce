"""AdvEncoder: one universal perturbation or patch that fools every downstream model of a pre-trained encoder.

Zhou et al., "Downstream-agnostic Adversarial Examples", ICCV 2023 (arXiv 2307.12280; official code
CGCL-codes/AdvEncoder). The attacker sees only the encoder and a surrogate dataset: no pre-training
data, no downstream task, no downstream classifier. A generator turns a *fixed* noise input into one
perturbation (``per``, L∞) or one patch (``pat``), trained with Adam to

* push every adversarial embedding away from its clean twin (``-InfoNCE(f(x), f(x'))``, τ = 0.1, weight α),
* stay close to the image (``MSE(x', x)``),
* change the image's high-frequency content (``-MSE(H(x), H(x'))``, ``H`` an FFT high-pass whose disk
  radius is the reference's 8 px at 64x64, scaled to the image size).

Where robustlab differs from the reference code, on purpose:

* x' is clipped to ``[0, 1]`` in training and at test time (the reference never clips; ``unclipped_training``
  restores its training loss for reproduction, application stays clipped and verified).
* Patch values are kept in ``[0, 1]`` by a sigmoid (the reference clamps in the *normalized* space and
  pastes before normalizing, so its patches reach about -2.1..2.6 in pixel space: not realisable).
* ``bound="tanh"`` makes the perturbation ``eps * tanh(raw / eps)`` instead of the reference's clamp of
  the generator's map ``raw`` (the same near 0): the clamp passes no gradient where a pixel sits at
  ``±eps``, and once most pixels do the generator stops learning. :attr:`AdvEncoder.diagnostics` says,
  per epoch, how much gradient each loss term sends to the generator's map and which share of the
  perturbation sits at its bound.
* The generator's noise batch is a parameter (``noise_batch``) rather than tied to the data batch size,
  and its channels halve from 256 per up-sampling stage (the reference: 1024..128 for 64x64).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import robustlab.attacks._prediction_change  # noqa: F401  (registers the paper's ASR as a task)
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab import ssl  # noqa: F401  (registers the simclr encoder this attack is evaluated against)
from robustlab.attack import ATTACKS, Attack, CallContext, UniversalPerturbation
from robustlab.data.base import iterate_batches
from robustlab.errors import ConfigError, ThreatModelViolation
from robustlab.seeding import global_rng_seeded
from robustlab.threat import Norm, ThreatModel

__all__ = ["AdvEncoder", "check_patch", "high_low_energy_ratio", "high_pass", "info_nce", "patch_box"]

MODES = ("per", "pat")
BOUNDS = ("clamp", "tanh")


def info_nce(query: Tensor, key: Tensor, temperature: float = 0.1) -> Tensor:
    """InfoNCE with in-batch negatives: cross-entropy of ``cos(q_i, k_j) / τ`` with target ``j = i``.

    Example:
        >>> q = torch.eye(3)
        >>> bool(info_nce(q, q) < info_nce(q, q.roll(1, 0)))
        True
    """
    logits = F.normalize(query, dim=1) @ F.normalize(key, dim=1).t() / temperature
    return F.cross_entropy(logits, torch.arange(len(query), device=query.device))


def _low_pass_disk(height: int, width: int, radius: float, device: torch.device) -> Tensor:
    """A centred disk of ``radius`` on the (fft-shifted) spectrum: the low frequencies."""
    rows = torch.arange(height, device=device).view(-1, 1) - height // 2
    cols = torch.arange(width, device=device).view(1, -1) - width // 2
    return (rows**2 + cols**2 < radius**2).float()


def high_pass(x: Tensor, radius: float) -> Tensor:
    """The high-frequency component of each channel: the spectrum outside a centred disk, back in pixels.

    Example:
        >>> flat = torch.full((1, 3, 16, 16), 0.5)
        >>> float(high_pass(flat, radius=2).abs().max()) < 1e-6
        True
    """
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    keep = 1 - _low_pass_disk(x.shape[-2], x.shape[-1], radius, x.device)
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum * keep, dim=(-2, -1))).real


def high_low_energy_ratio(delta: Tensor, radius: float) -> float:
    """Spectral energy of ``delta`` outside the low-pass disk divided by the energy inside it.

    Example:
        >>> checker = (torch.arange(16).view(-1, 1) + torch.arange(16)).remainder(2).float().expand(1, 3, 16, 16)
        >>> high_low_energy_ratio(checker - 0.5, radius=2) > 100
        True
    """
    power = torch.fft.fftshift(torch.fft.fft2(delta.double()), dim=(-2, -1)).abs() ** 2
    low = _low_pass_disk(delta.shape[-2], delta.shape[-1], radius, delta.device).double()
    return float((power * (1 - low)).sum() / (power * low).sum().clamp_min(1e-30))


def patch_box(height: int, width: int, fraction: float) -> tuple[int, int, int]:
    """``(top, left, side)`` of the reference's square patch: side ``floor(sqrt(fraction * H * W))``.

    The reference puts it at a fixed place 14 px from the bottom-right corner of a 64x64 image; the
    margin scales with the image. Its area is at most ``fraction`` of the image (the floor rounds down).

    Example:
        >>> patch_box(64, 64, 0.03)
        (39, 39, 11)
    """
    side = math.floor(math.sqrt(fraction * height * width))
    top = height - round(14 * height / 64) - side
    left = width - round(14 * width / 64) - side
    if side < 1 or top < 0 or left < 0:
        raise ConfigError(f"a patch of {fraction:.3g} of a {height}x{width} image does not fit (side {side} px)")
    return top, left, side


class _Generator(nn.Module):
    """DCGAN-style up-sampler from a fixed noise batch, merged into one map by a conv over the batch axis.

    Each stage doubles the side from 4 up to the first power of two times 4 that covers the image, which
    is then centre-cropped; the last layer is a Tanh, then the merge conv ``Conv2d(noise_batch, 1, 3)``.
    """

    def __init__(self, height: int, width: int, *, noise_dim: int, noise_batch: int) -> None:
        super().__init__()
        stages = max(1, math.ceil(math.log2(max(height, width) / 4)))
        widths = [max(256 >> i, 16) for i in range(stages)]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(noise_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        ]
        for cin, cout in itertools.pairwise(widths):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.merge = nn.Conv2d(noise_batch, 1, 3, padding=1)
        self.height, self.width = height, width
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, noise: Tensor) -> Tensor:
        maps = self.net(noise)
        top, left = (maps.shape[-2] - self.height) // 2, (maps.shape[-1] - self.width) // 2
        maps = maps[..., top : top + self.height, left : left + self.width]
        return self.merge(maps.transpose(0, 1)).transpose(0, 1)  # (3, B, H, W) -> (3, 1, H, W) -> (1, 3, H, W)


@ATTACKS.register(
    "advencoder",
    summary="AdvEncoder (Zhou et al., ICCV 2023): one perturbation or patch against a pre-trained encoder.",
)
@dataclass(kw_only=True, eq=False)
class AdvEncoder(UniversalPerturbation):
    """One universal perturbation (``per``) or patch (``pat``) learned against an encoder alone.

    ``fit`` it on an :class:`robustlab.encoders.Encoder` (any module mapping images to features) and a
    surrogate dataset; it then applies ``clamp(x + delta, 0, 1)`` (``per``) or pastes the patch at a fixed
    place (``pat``) on every input of every downstream model. The loss is ``alpha * (-InfoNCE) + MSE(x', x)
    + hfc * (-MSE(H(x), H(x')))`` (see the module docstring for the reference and the deviations).

    Args:
        mode: ``per`` (L∞ perturbation) or ``pat`` (square patch with values in ``[0, 1]``).
        eps: L∞ budget of ``per``.
        patch_frac: largest fraction of the image the patch covers (``pat``).
        alpha: weight of the feature-push (InfoNCE) term.
        hfc: weight of the high-frequency term (0 switches it off: the ablation).
        radius: low-pass disk radius in px of the spectrum; default ``8 * H / 64`` (the reference's 8 at 64x64).
        temperature: InfoNCE temperature (the reference's fixed 0.1; its ``--temperature`` is never read).
        epochs: passes over the first ``n_fit`` samples of the surrogate data.
        n_fit: surrogate samples used.
        batch_size: samples per Adam step.
        lr: Adam learning rate (betas 0.5, 0.999 as the reference).
        noise_dim: channels of the fixed noise input.
        noise_batch: noise samples merged into the one perturbation.
        unclipped_training: train on the unclipped ``x + delta`` as the reference does (``per`` only).
        bound: how ``per`` keeps the generator's map within ±eps: ``clamp`` (the reference) or ``tanh``
            (``eps * tanh(map / eps)``, which passes a gradient at the bound too).
        load: a safetensors file written by an earlier run (``delta``, or ``patch`` and ``mask``).

    Example:
        >>> AdvEncoder().threat.describe(), AdvEncoder(mode="pat").threat.norm.value
        ('linf 10/255', 'patch')
    """

    task: ClassVar[str | None] = None

    mode: str = "per"
    eps: float = 10 / 255
    patch_frac: float = 0.03
    alpha: float = 5.0
    hfc: float = 1.0
    radius: float | None = None
    temperature: float = 0.1
    epochs: int = 20
    n_fit: int = 2048
    batch_size: int = 128
    lr: float = 2e-4
    noise_dim: int = 100
    noise_batch: int = 64
    unclipped_training: bool = False
    bound: str = "clamp"
    diagnostics: list[dict[str, float]] = field(default_factory=list, init=False, repr=False)
    """One entry per epoch of the last fit, on its last batch: the norm of each loss term's gradient at
    the generator's map (``grad_infonce`` for alpha * -InfoNCE, ``grad_reconstruction``, ``grad_hfc``)
    and ``saturated``, the share of the perturbation (or patch) within 1% of its bound. A field (not a
    hyperparameter) only because :meth:`config` has always listed it."""
    _patch: Tensor | None = field(default=None, init=False, repr=False)
    _mask: Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"advencoder mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.bound not in BOUNDS:
            raise ConfigError(f"advencoder bound must be one of {', '.join(BOUNDS)}, got {self.bound!r}")
        if min(self.epochs, self.n_fit, self.batch_size, self.noise_dim, self.noise_batch) < 1:
            raise ConfigError("advencoder epochs, n_fit, batch_size, noise_dim and noise_batch must be positive")
        if not 0 < self.patch_frac < 1 or self.eps < 0 or self.temperature <= 0:
            raise ConfigError("advencoder needs 0 < patch_frac < 1, eps >= 0 and temperature > 0")

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(Norm.LINF, self.eps) if self.mode == "per" else ThreatModel(Norm.PATCH, self.patch_frac)

    def fit(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool = True) -> Attack:
        if self.mode == "per" or self.load is not None:
            return super().fit(model, dataset, generator=generator, progress=progress)
        patch = self._optimize(model, dataset, generator=generator, progress=progress)
        self.load_fitted({"patch": patch, "mask": self._mask_like(patch)})
        return self

    def _learn(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool) -> Tensor:
        return self._optimize(model, dataset, generator=generator, progress=progress)

    def _mask_like(self, image: Tensor) -> Tensor:
        """The patch's binary mask ``(1, 1, H, W)`` for images shaped like ``image``."""
        top, left, side = patch_box(image.shape[-2], image.shape[-1], self.patch_frac)
        mask = torch.zeros(1, 1, *image.shape[-2:], device=image.device)
        mask[..., top : top + side, left : left + side] = 1
        return mask

    def _constrain(self, raw: Tensor) -> Tensor:
        """The generator's map as the perturbation (clamped to, or eps * tanh into, ±eps) or the patch (a sigmoid
        into [0, 1])."""
        if self.mode == "pat":
            return torch.sigmoid(raw)
        if self.bound == "tanh":
            return self.eps * torch.tanh(raw / self.eps) if self.eps else torch.zeros_like(raw)
        return raw.clamp(-self.eps, self.eps)

    def _saturated(self, made: Tensor) -> float:
        """The share of the perturbation (or patch) within 1% of its bound, where clamp or sigmoid pass little
        gradient."""
        if self.mode == "per":
            return (made.abs() >= 0.99 * self.eps).float().mean().item()
        return ((made <= 0.01) | (made >= 0.99)).float().mean().item()

    def _apply(self, x: Tensor, made: Tensor, mask: Tensor | None) -> Tensor:
        if mask is not None:
            return x * (1 - mask) + made * mask
        x_adv = x + made
        return x_adv if self.unclipped_training else x_adv.clamp(0, 1)

    def _optimize(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool) -> Tensor:
        """Train the generator on the surrogate data; return its final perturbation or patch ``(1, C, H, W)``."""
        if len(dataset) == 0:
            raise ConfigError("the fit data has no samples: advencoder needs a surrogate set to learn from")
        device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
        height, width = dataset[0][0].shape[-2:]
        radius = self.radius if self.radius is not None else 8 * height / 64
        init_seed = int(torch.randint(2**62, (1,), generator=generator))
        with global_rng_seeded(init_seed):  # layer init draws from the global RNG: make it a function of ours
            net = _Generator(height, width, noise_dim=self.noise_dim, noise_batch=self.noise_batch).to(device)
        noise = torch.randn(self.noise_batch, self.noise_dim, 1, 1, generator=generator).to(device)
        mask = None if self.mode == "per" else self._mask_like(torch.empty(1, 1, height, width, device=device))
        optimizer = torch.optim.Adam(net.parameters(), lr=self.lr, betas=(0.5, 0.999))
        n = min(self.n_fit, len(dataset))
        bar = tqdm(total=self.epochs * -(-n // self.batch_size), desc="fitting advencoder", disable=not progress)
        net.train()
        self.diagnostics = []
        last = -(-n // self.batch_size) - 1
        for _ in range(self.epochs):
            batches = iterate_batches(dataset, torch.randperm(n, generator=generator), self.batch_size)
            for b, (_, x, _) in enumerate(batches):
                x = x.to(device)
                raw = net(noise)
                made = self._constrain(raw)
                x_adv = self._apply(x, made, mask)
                with torch.no_grad():
                    clean = model(x)
                push = -info_nce(clean, model(x_adv), self.temperature)
                terms = {"infonce": self.alpha * push, "reconstruction": F.mse_loss(x_adv, x)}
                if self.hfc:
                    terms["hfc"] = -self.hfc * F.mse_loss(high_pass(x_adv, radius), high_pass(x, radius))
                if b == last:
                    self.diagnostics.append(_diagnose(terms, raw) | {"saturated": self._saturated(made)})
                loss = sum(terms.values(), torch.zeros((), device=device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update()
                bar.set_postfix(infonce=f"{-push.item():.3f}", refresh=False)
        bar.close()
        with torch.no_grad():
            made = self._constrain(net(noise))
        return (made if mask is None else made * mask).detach().cpu()

    def fitted(self) -> dict[str, Tensor]:
        if self.mode == "per":
            return super().fitted()
        return {} if self._patch is None or self._mask is None else {"patch": self._patch, "mask": self._mask}

    def load_fitted(self, tensors: dict[str, Tensor]) -> None:
        if self.mode == "per":
            super().load_fitted(tensors)
            return
        if "patch" not in tensors or "mask" not in tensors:
            raise ConfigError(f"an advencoder patch needs tensors patch and mask, got {', '.join(tensors) or 'none'}")
        patch, mask = tensors["patch"].detach().cpu().float(), tensors["mask"].detach().cpu().float()
        if patch.dim() != 4 or patch.shape[0] != 1 or mask.shape != (1, 1, *patch.shape[-2:]):
            raise ConfigError(f"a patch is (1, C, H, W) with a (1, 1, H, W) mask, got {tuple(patch.shape)}")
        check_patch(patch, mask, self.patch_frac)
        self._patch, self._mask = patch, mask

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        if self.mode == "per":
            return super()._run(model, x, y, context)
        if self._patch is None or self._mask is None:
            raise ConfigError("advencoder is universal: fit it (or pass load=PATH) before applying it")
        if self._patch.shape[1:] != x.shape[1:]:
            raise ConfigError(f"the patch is for {tuple(self._patch.shape[1:])} images, these are {tuple(x.shape[1:])}")
        x_adv = self._apply(x, self._patch.to(x), self._mask.to(x))
        if not torch.equal(x_adv * (1 - self._mask.to(x)), x * (1 - self._mask.to(x))):
            raise ThreatModelViolation("the patch changed pixels outside its mask")
        return x_adv


def _diagnose(terms: dict[str, Tensor], raw: Tensor) -> dict[str, float]:
    """The norm of each loss term's gradient at the generator's map ``raw`` (what reaches the generator through
    the bound), 0 for a term switched off."""
    norms = {"grad_hfc": 0.0}
    for name, term in terms.items():
        (grad,) = torch.autograd.grad(term, raw, retain_graph=True)
        norms[f"grad_{name}"] = grad.norm().item()
    return norms


def check_patch(patch: Tensor, mask: Tensor, fraction: float) -> None:
    """Raise :class:`ThreatModelViolation` unless ``mask`` is binary, covers at most ``fraction`` of the image,
    and ``patch`` lies in ``[0, 1]`` (the reference's patches do not)."""
    if not torch.isfinite(patch).all() or float(patch.min()) < 0 or float(patch.max()) > 1:
        raise ThreatModelViolation(
            f"patch values leave [0, 1]: min {float(patch.min()):.4g}, max {float(patch.max()):.4g}"
        )
    if not torch.equal(mask, (mask > 0.5).float()):
        raise ThreatModelViolation("the patch mask is not binary")
    area = float(mask.mean())
    if area > fraction + 1e-9:
        raise ThreatModelViolation(f"the patch covers {area:.4f} of the image, more than its budget {fraction:.4f}")
