"""Universal adversarial perturbations: one ``delta`` for every input (``uap``), and its random baseline (``noise``).

``uap`` follows Shafahi et al., "Universal Adversarial Training" (AAAI 2020, arXiv 1812.03705): stochastic
gradient ascent on the mean loss of a batch, with the loss clipped so that inputs that are already
fooled stop pulling ``delta``, and an L∞ projection after every step. Against an encoder (no labels
downstream) the loss is the feature distortion ``||f(x + delta) - f(x)||^2``, the objective of the SSP
baseline of the AdvEncoder paper, from a random start (its gradient at ``delta = 0`` is zero).
``noise`` is uniform random sign noise at the same budget: what a universal attack must beat to show
that it learned anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.attack import ATTACKS, UniversalPerturbation, resolved
from robustlab.data.base import iterate_batches
from robustlab.encoders import Encoder
from robustlab.errors import ConfigError
from robustlab.threat import Norm

__all__ = ["UAP", "UniversalNoise"]


def _image_shape(dataset: Any) -> tuple[int, ...]:
    if len(dataset) == 0:
        raise ConfigError("the fit data has no samples: a universal perturbation needs some to learn from")
    image, _ = dataset[0]
    return (1, *image.shape)


@ATTACKS.register("uap", summary="Universal perturbation by SGD on a clipped batch loss (Shafahi et al. 2020), L∞.")
@dataclass(kw_only=True, eq=False)
class UAP(UniversalPerturbation):
    """One L∞ perturbation for all inputs, learned on the fit split (Shafahi et al., AAAI 2020).

    Each step moves ``delta`` by ``step_size`` along the sign of the gradient of the batch's mean loss and
    projects it back onto the ε-ball. We use signed steps (as FGSM/PGD do) rather than the paper's
    plain SGD update so that ``step_size`` is in pixel units whatever the loss scale.

    Args:
        eps: L∞ budget.
        epochs: passes over the first ``n_fit`` samples of the fit split.
        n_fit: samples of the fit split used.
        batch_size: samples per step.
        step_size: signed step per batch (default ``eps / 8``).
        clip: cross-entropy above this no longer counts (a fooled input stops pulling ``delta``).
        load: see :class:`robustlab.attack.UniversalPerturbation`.

    Example:
        >>> attack = UAP(eps=8 / 255)
        >>> attack.threat.describe(), attack.kind.value
        ('linf 8/255', 'universal')
    """

    norm: ClassVar[Norm] = Norm.LINF
    eps: float = 10 / 255
    epochs: int = 5
    n_fit: int = 2048
    batch_size: int = 128
    step_size: float | None = None
    clip: float = 9.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.n_fit < 1 or self.batch_size < 1:
            raise ValueError("epochs, n_fit and batch_size must be positive")
        if self.step_size is None:
            self.step_size = self.eps / 8

    def _learn(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool) -> Tensor:
        device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
        features = isinstance(model, Encoder)
        shape = _image_shape(dataset)
        # Shafahi et al. start at zero; feature distortion has a zero gradient there, so it starts at a random
        # point of the ball as SSP does
        start = (torch.rand(shape, generator=generator) * 2 - 1) * self.eps if features else torch.zeros(shape)
        delta = start.to(device)
        n, step_size = min(self.n_fit, len(dataset)), resolved(self.step_size)
        loss_of = _feature_distortion if features else self._clipped_cross_entropy
        bar = tqdm(total=self.epochs * -(-n // self.batch_size), desc="fitting uap", disable=not progress, leave=False)
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=generator)
            for _, x, y in iterate_batches(dataset, order, self.batch_size):
                x, y = x.to(device), y.to(device)
                delta.requires_grad_(True)
                loss = loss_of(model, x, (x + delta).clamp(0, 1), y)
                (grad,) = torch.autograd.grad(loss, delta)
                delta = (delta.detach() + step_size * grad.sign()).clamp(-self.eps, self.eps)
                bar.update()
        bar.close()
        return delta.detach().cpu()

    def _clipped_cross_entropy(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x_adv), y, reduction="none").clamp(max=self.clip).mean()


def _feature_distortion(encoder: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        clean = encoder(x)
    return (encoder(x_adv) - clean).pow(2).sum(dim=1).mean()


@ATTACKS.register("noise", summary="Uniform random sign noise at the budget, one draw for all inputs (baseline).")
@dataclass(kw_only=True, eq=False)
class UniversalNoise(UniversalPerturbation):
    """``eps`` times a random sign per pixel, drawn once: the universal attack that learns nothing.

    Example:
        >>> UniversalNoise(eps=4 / 255).uses_gradients
        False
    """

    uses_gradients = False
    norm: ClassVar[Norm] = Norm.LINF
    eps: float = 10 / 255

    def _learn(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool) -> Tensor:
        signs = torch.randint(0, 2, _image_shape(dataset), generator=generator).float() * 2 - 1
        return signs * self.eps
