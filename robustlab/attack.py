"""The Attack interface and the registry that holds every attack.

An attack is hyperparameters plus ``_run``; the model is an argument of the call, never of the
constructor, so one configured attack can be applied to the bare and to the defended model alike.
:meth:`Attack.__call__` is the one place that checks inputs and verifies the output against the
threat model.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import Any, ClassVar, final

import torch
from torch import Tensor, nn

from robustlab.errors import ConfigError
from robustlab.registry import Registry
from robustlab.threat import ThreatModel, verify

__all__ = ["ATTACKS", "Attack", "AttackKind", "check_images"]


class AttackKind(str, enum.Enum):
    """What an attack produces, which decides how the evaluator scores it.

    ``perturbation``: one ``x_adv`` per input inside a budget (PGD). ``universal``: one perturbation or
    patch for every input, learned by ``fit`` first (AdvEncoder). ``generative``: images from nothing
    (fooling images). ``task``: a task other than classification (captioning). The last two score
    themselves through :meth:`Attack.evaluate`.
    """

    PERTURBATION = "perturbation"
    UNIVERSAL = "universal"
    GENERATIVE = "generative"
    TASK = "task"

    def __str__(self) -> str:
        return self.value


class Attack(ABC):
    """Base class of every attack.

    Subclasses set :attr:`kind`, take keyword-only hyperparameters (papers' defaults) in
    ``__init__``, expose :attr:`threat`, and implement :meth:`_run`. Inputs and outputs are float
    ``(B, C, H, W)`` in ``[0, 1]``; labels are int64 ``(B,)``.
    """

    kind: ClassVar[AttackKind] = AttackKind.PERTURBATION
    uses_gradients: ClassVar[bool] = True
    early_stopping: ClassVar[bool] = False
    """Whether :meth:`_run` takes ``early_stop``: an attack that can stop each sample at its first success."""

    @property
    @abstractmethod
    def threat(self) -> ThreatModel:
        """The threat model every output is verified against."""

    @final
    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        generator: torch.Generator | None = None,
        early_stop: bool = False,
    ) -> Tensor:
        """Return adversarial examples for ``(x, y)`` against ``model``, verified and detached.

        ``early_stop`` says the caller only needs each sample misclassified by ``model`` once, as an
        evaluation does: attacks with :attr:`early_stopping` then stop a sample at its first success
        and return that point, which saves their remaining iterations; other attacks ignore it.
        """
        check_images(x)
        if model.training:
            raise ConfigError("the model is in training mode: attack numbers would be wrong; call model.eval()")
        if y.shape != x.shape[:1]:
            raise ConfigError(f"labels have shape {tuple(y.shape)}, expected ({x.shape[0]},)")
        if x.shape[0] == 0:
            return x.detach().clone()
        extra = {"early_stop": True} if early_stop and self.early_stopping else {}
        x_adv = self._run(model, x.detach(), y.detach(), generator=generator, **extra).detach()
        verify(self.threat, x, x_adv)
        return x_adv

    @abstractmethod
    def _run(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None) -> Tensor:
        """Compute ``x_adv``; must not modify ``x`` in place."""

    def fit(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool = True) -> Attack:
        """Learn what a universal attack applies to every input (no-op for per-input attacks)."""
        return self

    def generate(
        self, model: nn.Module, *, generator: torch.Generator, store: Any = None, progress: bool = True
    ) -> dict[str, Tensor]:
        """Produce images from nothing (generative attacks only), scored by the attack's task.

        Returns at least ``images`` (float ``(N, C, H, W)`` in ``[0, 1]``) and ``target`` (int64 ``(N,)``,
        the class each image is meant to be recognised as), plus ``queries`` (int64 ``(1,)``, model
        evaluations spent). ``store`` (``get(key)``/``put(key, tensors)``, keys private to this call) holds
        intermediate state so that a killed run resumes where it stopped.
        """
        raise NotImplementedError(f"{type(self).__name__} is a {self.kind} attack and does not generate images")

    def config(self) -> dict[str, Any]:
        """Hyperparameters as plain values, recorded in reports and used in cache keys."""
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in vars(self).items() if not k.startswith("_")}


def check_images(x: Tensor) -> None:
    """Raise :class:`ConfigError` unless ``x`` is a float ``(B, C, H, W)`` batch in ``[0, 1]``."""
    if not torch.is_floating_point(x) or x.dim() != 4:
        raise ConfigError(f"images must be a float (B, C, H, W) tensor, got {tuple(x.shape)} {x.dtype}")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ConfigError("images must lie in [0, 1]: normalization belongs inside the model wrapper")


ATTACKS: Registry[Attack] = Registry("attack")
