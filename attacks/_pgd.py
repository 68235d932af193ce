"""robustlab's own projected-gradient loop, shared by ``pgd`` (L∞) and ``pgdl2`` (L2).

It replaces the torchattacks call because an evaluation only needs each sample to be fooled once:
with ``early_stop`` a sample leaves the batch at the first iterate the model misclassifies, and that
iterate is what is returned (never a later, possibly weaker one). The forward pass that computes the
gradient already yields the logits of the current iterate, so the check costs nothing, and the batch
that is differentiated shrinks as samples fall. When the scored model is another one (a transfer
attack: the bare model differentiated, the defended one scored), each iterate costs one forward pass
of the scored model instead, and a sample stops at the first iterate *that* model misclassifies.
Without ``early_stop`` the arithmetic is exactly torchattacks' ``PGD.forward`` / ``PGDL2.forward``
(same operations in the same order), so a configuration without a random start reproduces
torchattacks to the last bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attack import Attack, CallContext, misclassified, resolved
from robustlab.progress import advance
from robustlab.threat import Norm

__all__ = [
    "ProjectedGradientAttack",
    "l2_random_start",
    "l2_step",
    "linf_random_start",
    "linf_step",
    "per_sample_random_start",
    "projected_gradient_descent",
]

Step = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(x, x_adv, grad) -> next x_adv``, projected onto the budget and the ``[0, 1]`` box."""


def linf_random_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """A uniform point of the L∞ ball around ``x``, clipped to ``[0, 1]`` (drawn on the generator's device)."""
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=_draw_device(generator, x))
    return (x + (noise * 2 - 1).mul_(eps).to(x.device)).clamp(0, 1)


def l2_random_start(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """A random point of the L2 ball around ``x`` (direction Gaussian, radius uniform), as torchattacks draws it."""
    device = _draw_device(generator, x)
    delta = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device)
    radius = torch.rand((len(x), 1, 1, 1), generator=generator, dtype=x.dtype, device=device)
    norms = delta.flatten(1).norm(p=2, dim=1).view(-1, 1, 1, 1)
    return (x + (delta * (radius / norms * eps)).to(x.device)).clamp(0, 1)


def per_sample_random_start(x: Tensor, eps: float, seeds: Tensor, norm: Norm) -> Tensor:
    """The random start of each sample drawn from its own seed: the same point whatever batch it is in."""
    draw = linf_random_start if norm is Norm.LINF else l2_random_start
    starts = [draw(x[i : i + 1], eps, torch.Generator().manual_seed(int(seed))) for i, seed in enumerate(seeds)]
    return torch.cat(starts)


def linf_step(eps: float, step_size: float) -> Step:
    """Signed-gradient ascent step then projection, as in torchattacks ``PGD.forward``."""

    def step(x: Tensor, x_adv: Tensor, grad: Tensor) -> Tensor:
        x_adv = x_adv + step_size * grad.sign()
        delta = torch.clamp(x_adv - x, min=-eps, max=eps)
        return torch.clamp(x + delta, min=0, max=1)

    return step


def l2_step(eps: float, step_size: float) -> Step:
    """Normalized-gradient ascent step then projection, as in torchattacks ``PGDL2.forward``."""

    def step(x: Tensor, x_adv: Tensor, grad: Tensor) -> Tensor:
        grad_norms = torch.norm(grad.view(len(x), -1), p=2, dim=1) + 1e-10
        x_adv = x_adv + step_size * (grad / grad_norms.view(-1, 1, 1, 1))
        delta = x_adv - x
        delta_norms = torch.norm(delta.view(len(x), -1), p=2, dim=1)
        factor = torch.min(eps / delta_norms, torch.ones_like(delta_norms))
        return torch.clamp(x + delta * factor.view(-1, 1, 1, 1), min=0, max=1)

    return step


def projected_gradient_descent(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_start: Tensor,
    *,
    steps: int,
    step: Step,
    early_stop: bool,
    scored: nn.Module | None = None,
) -> Tensor:
    """Run ``steps`` iterations of untargeted PGD on the cross-entropy loss from ``x_start``.

    Args:
        model: returns logits for ``[0, 1]`` images; in eval mode.
        x: clean images ``(B, C, H, W)``.
        y: labels ``(B,)``.
        x_start: first iterate (``x`` itself, or a random start).
        steps: forward+backward passes for a sample that is never fooled.
        step: the norm's ascent-and-projection step.
        early_stop: freeze a sample at the first iterate the scored model misclassifies and stop differentiating it.
        scored: the model scored, when it is not ``model`` (``None``: ``model`` itself).

    Returns:
        ``x_adv`` with the shape and dtype of ``x``, detached.
    """
    x_adv = x_start.detach().clone()
    active = torch.arange(len(x), device=x.device)
    xa, ya, adva = x, y, x_adv
    for i in range(steps):
        advance("pgd steps", i, steps)
        adva = adva.detach().requires_grad_(True)
        logits = model(adva)
        # torchattacks' mean over the batch, but always over the *full* batch: the L2 step's 1e-10 guard makes
        # it depend on the gradient's scale, which must not change as the active batch shrinks.
        loss = F.cross_entropy(logits, ya, reduction="sum") / len(x)
        (grad,) = torch.autograd.grad(loss, adva)
        adva = adva.detach()
        if early_stop:
            # The logits are those of the current iterate: a fooled sample keeps exactly this point.
            fooled = misclassified(logits, ya, adva, scored)
            if fooled.any():
                x_adv[active[fooled]] = adva[fooled]
                keep = ~fooled
                active, xa, ya, adva, grad = active[keep], xa[keep], ya[keep], adva[keep], grad[keep]
                if not len(active):
                    return x_adv
        adva = step(xa, adva, grad)
    x_adv[active] = adva
    return x_adv


@dataclass(kw_only=True, eq=False)
class ProjectedGradientAttack(Attack):
    """PGD under ``norm``: subclasses fix the norm and give ``eps`` its default (the registry reads both)."""

    norm: ClassVar[Norm]
    early_stopping = True
    tracks_scored = True
    per_sample_streams = True

    eps: float
    step_size: float | None = None
    steps: int = 10
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.step_size is None:
            self.step_size = self.eps / 4

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        random_start, step = (linf_random_start, linf_step) if self.norm is Norm.LINF else (l2_random_start, l2_step)
        if not self.random_start:
            start = x
        elif context.sample_seeds is not None:
            start = per_sample_random_start(x, self.eps, context.sample_seeds, self.norm)
        else:
            start = random_start(x, self.eps, context.generator)
        return projected_gradient_descent(
            model,
            x,
            y,
            start,
            steps=self.steps,
            step=step(self.eps, resolved(self.step_size)),
            early_stop=context.early_stop,
            scored=context.scored,
        )


def _draw_device(generator: torch.Generator | None, x: Tensor) -> torch.device:
    return generator.device if generator is not None else x.device
