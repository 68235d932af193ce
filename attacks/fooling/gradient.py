"""Fooling images by gradient ascent (Nguyen et al., CVPR 2015, §3.9), one image per class in one batch.

Follows the official ``caffe/ascent/find_fooling_image.py`` (branch ``ascent``): start near the mean image,
then repeat — clip to the valid range, forward, take the gradient of the target unit, step with the
"progress" learning rate, apply L2 decay towards the mean image, and blur every ``blur_every`` iterations.
The official code works on mean-subtracted 0–255 BGR values; here the same updates act on ``[0, 1]`` pixels
(``x = mean + X / 255``): the progress step is invariant to that rescaling, and decay and blur are linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia
import torch
from robustlab.attacks.fooling.evolution import quantize_8bit
from torch import Tensor, nn

__all__ = ["AscentConfig", "gradient_ascent"]

MILESTONES = (0.99, 0.999, 0.9999)


@dataclass(frozen=True)
class AscentConfig:
    """The ascent's hyperparameters; the defaults are the official ``hp_seed=-1`` run (no regularisation).

    Args:
        steps: iterations ``N`` (forward passes per image).
        objective: ``softmax`` pushes the class probability (``prob``), ``logit`` its logit (``fc8``).
        early_prog, late_prog_mult: the progress policy: each step aims for a first-order gain of
            ``min(early_prog, late_prog_mult · (1 − p_c))`` and so takes ``lr = gain / ‖g‖²``.
        max_lr: cap on ``lr``.
        decay: L2 decay, ``X ← X · (1 − decay)`` towards the mean image after each step.
        blur_radius: Gaussian blur σ in pixels (0: none; the official code refuses values below 0.3).
        blur_every: blur on iterations divisible by this.
    """

    steps: int = 500
    objective: str = "softmax"
    early_prog: float = 0.02
    late_prog_mult: float = 0.1
    max_lr: float = 1e12
    decay: float = 0.0
    blur_radius: float = 0.0
    blur_every: int = 1


def gradient_ascent(
    model: nn.Module,
    targets: Tensor,
    *,
    shape: tuple[int, int, int],
    mean: Tensor,
    config: AscentConfig,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """Ascend one image per target class; return the best iterate of each.

    The progress rule uses the class probability in its late term for both objectives: the official code
    uses the pushed unit's value, which for a logit above 1 makes the desired progress negative. Images are
    rounded to 8 bits at the end (so a PNG holds them exactly) and rescored.

    Args:
        model: classifier taking ``[0, 1]`` images; not modified.
        targets: int64 ``(K,)`` classes to push.
        shape: ``(C, H, W)`` of the images.
        mean: ``(1, C, 1, 1)`` the model's normalisation mean, the "mean image" of the official code.
        config: the ascent's hyperparameters.
        generator: draws the ``mean_plus`` start, ``mean + N(0, 1)/255``.

    Returns:
        ``images`` ``(K, C, H, W)``, ``confidence`` ``(K,)`` of the 8-bit images, ``first_reached`` ``(K, 3)``:
        the first iteration where ``p_c`` exceeded 0.99 / 0.999 / 0.9999 (``-1``: never), ``queries`` ``(1,)``.
    """
    device = mean.device
    k = targets.shape[0]
    start = torch.randn((k, *shape), generator=generator, device=generator.device).to(device)
    x = mean + start / 255
    best = _Best.start(x.clamp(0, 1))
    rows = torch.arange(k, device=device)
    for step in range(config.steps):
        x = x.clamp(0, 1).detach().requires_grad_(True)
        logits = model(x)
        probs = logits.softmax(dim=1)[rows, targets]
        unit = probs if config.objective == "softmax" else logits[rows, targets]
        (grad,) = torch.autograd.grad(unit.sum(), x)
        p = probs.detach()
        best.update(step, x.detach(), p)
        if step == config.steps - 1:
            break
        x = x.detach() + _progress_lr(grad, p, config).view(-1, 1, 1, 1) * grad
        x = mean + (x - mean) * (1 - config.decay)
        if config.blur_radius > 0 and step % config.blur_every == 0:
            x = _blur(x, config.blur_radius)
    images = quantize_8bit(best.images)
    with torch.no_grad():
        confidence = model(images).softmax(dim=1)[rows, targets]
    return {
        "images": images,
        "confidence": confidence,
        "first_reached": best.first,
        "queries": torch.tensor([k * (config.steps + 1)]),
    }


@dataclass
class _Best:
    """Each image's best iterate so far, its class probability, and the first iteration it passed each milestone."""

    images: Tensor
    p: Tensor
    first: Tensor
    """``(K, len(MILESTONES))``; ``-1``: not yet."""

    @classmethod
    def start(cls, images: Tensor) -> _Best:
        """Before the first step: ``images``, below any probability, no milestone reached."""
        k, device = len(images), images.device
        return cls(
            images,
            torch.full((k,), -1.0, device=device),
            torch.full((k, len(MILESTONES)), -1, dtype=torch.long, device=device),
        )

    def update(self, step: int, x: Tensor, p: Tensor) -> None:
        """Iteration ``step`` reached ``x`` with class probabilities ``p``."""
        improved = p > self.p
        self.images, self.p = torch.where(improved.view(-1, 1, 1, 1), x, self.images), torch.where(improved, p, self.p)
        for i, level in enumerate(MILESTONES):
            self.first[:, i] = torch.where((self.first[:, i] < 0) & (p > level), step, self.first[:, i])


def _progress_lr(grad: Tensor, p: Tensor, config: AscentConfig) -> Tensor:
    """The official "progress" policy: per image, the rate whose first-order gain is the desired progress
    ``min(early_prog, late_prog_mult · (1 − p))`` (0 without a gradient), at most ``max_lr``."""
    gain = torch.minimum(torch.full_like(p, config.early_prog), config.late_prog_mult * (1 - p))
    norm2 = grad.flatten(1).square().sum(dim=1)
    return torch.where(norm2 > 0, gain / norm2.clamp(min=1e-30), 0.0).clamp(max=config.max_lr)


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Per-channel Gaussian blur truncated at 4σ like ``scipy.ndimage.gaussian_filter`` (borders mirrored
    without repeating the edge pixel, where scipy repeats it)."""
    size = 2 * int(4 * sigma + 0.5) + 1
    return kornia.filters.gaussian_blur2d(x, (size, size), (sigma, sigma), border_type="reflect")
