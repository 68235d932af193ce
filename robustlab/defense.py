"""The Defense interface, BPDA and EOT.

A defense turns a model into a defended model. The evaluator scores the defended model under two
threat modes: *transfer* (the attacker differentiates the bare model only: the seeds' gray-box
protocol) and *adaptive* (the attacker differentiates the whole defended pipeline, with BPDA through
non-differentiable steps and EOT over random ones).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from robustlab.enums import ValueEnum
from robustlab.registry import Registry

__all__ = ["DEFENSES", "EOT", "Defense", "Preprocessed", "PreprocessingDefense", "ThreatMode", "bpda"]


class ThreatMode(ValueEnum):
    """Which model the attacker differentiates when a defense is present."""

    TRANSFER = "transfer"
    ADAPTIVE = "adaptive"


class Defense(ABC):
    """Base class of every defense.

    ``wrap(model)`` is what gets scored. ``wrap(model, adaptive=True)`` is what an adaptive attacker
    differentiates: the same function, with non-differentiable steps replaced by their BPDA
    surrogate. ``randomized`` defenses are attacked through :class:`EOT` by the evaluator.
    """

    randomized: ClassVar[bool] = False
    changes_model: ClassVar[bool] = True
    tunes_encoders: ClassVar[bool] = False
    """``fit``/``wrap`` also take a feature :class:`robustlab.encoders.Encoder` and give a classifier of the fit
    data's classes: such a defense replaces each downstream head (``--task downstream``)."""

    def fit(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool = True) -> Defense:
        """Train what the defense learns (cached by config); no-op for defenses without parameters."""
        return self

    @abstractmethod
    def wrap(self, model: nn.Module, *, adaptive: bool = False) -> nn.Module:
        """Return the defended model, in eval mode, taking ``[0, 1]`` images."""

    def config(self) -> dict[str, Any]:
        """Hyperparameters as plain values, recorded in reports."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and isinstance(v, (int, float, str, bool))}


def bpda(transform: Callable[[Tensor], Tensor], surrogate: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Forward value of ``transform(x)``, gradient of ``surrogate(x)`` (Athalye et al., ICML 2018).

    Example:
        >>> x = torch.rand(1, 3, 4, 4, requires_grad=True)
        >>> out = bpda(lambda t: (t * 8).round() / 8, lambda t: t, x)
        >>> out.sum().backward(); bool((x.grad == 1).all())
        True
    """
    approx = surrogate(x)
    return approx + (transform(x) - approx).detach()


class PreprocessingDefense(Defense, nn.Module):
    """A defense that maps images to images before an unchanged classifier.

    Subclasses implement :meth:`transform` (the real operation, ``[0, 1] -> [0, 1]``) and, when it is
    not differentiable, set ``differentiable = False`` and may override :meth:`surrogate` (identity by
    default: BPDA-identity).
    """

    differentiable: ClassVar[bool] = True

    def __init__(self) -> None:
        nn.Module.__init__(self)

    @abstractmethod
    def transform(self, x: Tensor) -> Tensor:
        """Apply the defense's preprocessing to ``x``."""

    def surrogate(self, x: Tensor) -> Tensor:
        """Differentiable stand-in for :meth:`transform` used in the backward pass (identity)."""
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(x)

    def wrap(self, model: nn.Module, *, adaptive: bool = False) -> nn.Module:
        return Preprocessed(self, model, use_bpda=adaptive and not self.differentiable).eval()


class Preprocessed(nn.Module):
    """``model(defense.transform(x))``, with BPDA through the transform when ``use_bpda``."""

    def __init__(self, defense: PreprocessingDefense, model: nn.Module, *, use_bpda: bool) -> None:
        super().__init__()
        self.defense = defense
        self.model = model
        self.use_bpda = use_bpda

    def forward(self, x: Tensor) -> Tensor:
        if self.use_bpda:
            return self.model(bpda(self.defense.transform, self.defense.surrogate, x))
        return self.model(self.defense.transform(x))


class EOT(nn.Module):
    """Expectation over transformation: the mean of ``n_samples`` forward passes (Athalye et al., 2018).

    Used by the evaluator as the attacked model of a randomized defense; over a deterministic model it
    changes nothing.
    """

    def __init__(self, model: nn.Module, n_samples: int = 20) -> None:
        super().__init__()
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.model = model
        self.n_samples = n_samples

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.model(x) for _ in range(self.n_samples)]).mean(dim=0)


DEFENSES: Registry[Defense] = Registry("defense")
