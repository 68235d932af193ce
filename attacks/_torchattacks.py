"""Adapter that runs a torchattacks attack behind robustlab's :class:`Attack` interface.

torchattacks binds the model at construction, draws from (and sometimes reseeds) the global RNG and
prints; the adapter builds a fresh torchattacks object per call on the model it is given, runs it
inside :func:`robustlab.seeding.global_rng_seeded` seeded from the caller's generator, and swallows its stdout.
Normalization is never passed to torchattacks: robustlab models normalize inside.
"""

from __future__ import annotations

import contextlib
import io
from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attack import Attack, CallContext
from robustlab.errors import ConfigError
from robustlab.seeding import global_rng_seeded
from robustlab.threat import Norm, perturbation_norm

__all__ = [
    "TorchattacksAttack",
    "derive_seed",
    "num_classes_of",
    "stream_ids",
    "torchattacks_norm",
    "within_budget",
]


def derive_seed(generator: torch.Generator | None) -> int:
    """A 31-bit seed drawn from ``generator`` (0 without one), for libraries that take an int seed."""
    if generator is None:
        return 0
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def stream_ids(generator: torch.Generator | None, sample_seeds: Tensor | None) -> tuple[int, Tensor | None]:
    """``(seed, index)`` naming each sample's random stream: the evaluator's per-sample seeds when given (a
    sample's stream whatever its batch), else a seed drawn from ``generator`` and the samples' positions."""
    if sample_seeds is not None:
        return 0, sample_seeds.cpu()
    return derive_seed(generator), None


def torchattacks_norm(norm: Norm) -> str:
    """torchattacks' spelling of a norm ('Linf', 'L2')."""
    names = {Norm.LINF: "Linf", Norm.L2: "L2"}
    if norm not in names:
        raise ConfigError(f"norm must be linf or l2, got {norm}")
    return names[norm]


def num_classes_of(model: nn.Module, x: Tensor) -> int:
    """Number of logits the model returns (one forward pass on one image)."""
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


class TorchattacksAttack(Attack):
    """Base of attacks that delegate to torchattacks; subclasses implement :meth:`_build`."""

    @abstractmethod
    def _build(self, model: nn.Module, x: Tensor, seed: int) -> Any:
        """Construct the torchattacks object for this call."""

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        seed = derive_seed(context.generator)
        # torchattacks draws random starts from the global RNG: seeded, and confined to the block
        with global_rng_seeded(seed, device=x.device), contextlib.redirect_stdout(io.StringIO()):
            attack = self._build(model, x, seed)
            attack.set_device(x.device)
            x_adv: Tensor = attack(x, y)
        return x_adv.to(dtype=x.dtype)


def within_budget(x: Tensor, x_adv: Tensor, norm: Norm, eps: float | None) -> Tensor:
    """Keep a minimum-norm attack's result only where it fits the budget; elsewhere return ``x`` unchanged.

    A minimum-norm attack (CW, DeepFool) may find an adversarial example larger than ``eps``; under an
    ``eps`` threat model that sample was not broken, so the clean input stands for it.
    """
    if eps is None:
        return x_adv
    fits = perturbation_norm(x, x_adv, norm) <= eps
    return torch.where(fits.view(-1, 1, 1, 1), x_adv, x)
