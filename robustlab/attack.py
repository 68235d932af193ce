"""The Attack interface and the registry that holds every attack.

An attack is hyperparameters plus ``_run``; the model is an argument of the call, never of the
constructor, so one configured attack can be applied to the bare and to the defended model alike.
The hyperparameters are the fields of a keyword-only dataclass (:class:`Attack` says how to declare
them). :meth:`Attack.__call__` is the one place that checks inputs and verifies the output against
the threat model.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar, final

import torch
from torch import Tensor, nn

from robustlab.enums import ValueEnum
from robustlab.errors import ConfigError
from robustlab.registry import Registry
from robustlab.store import RunStore
from robustlab.threat import Norm, ThreatModel, verify

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackKind",
    "CallContext",
    "GenerativeAttack",
    "UniversalPerturbation",
    "check_images",
    "misclassified",
    "resolved",
]

T = TypeVar("T")


class AttackKind(ValueEnum):
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


@dataclass(frozen=True)
class CallContext:
    """What one call of an attack may use beyond its inputs (:meth:`Attack.__call__` says what each part means).

    Every attack's :meth:`Attack._run` takes it whole; a part reaches an attack only when the attack declares the
    capability that uses it (:attr:`Attack.early_stopping` for ``early_stop``, :attr:`Attack.per_sample_streams`
    for ``sample_seeds``, :attr:`Attack.saves_progress` for ``state``, :attr:`Attack.tracks_scored` for
    ``scored``): otherwise it holds the default, so no attack acts on a request it did not say it honours.
    """

    generator: torch.Generator | None = None
    early_stop: bool = False
    sample_seeds: Tensor | None = None
    state: RunStore | None = None
    scored: nn.Module | None = None


@dataclass(kw_only=True, eq=False)
class Attack(ABC):
    """Base class of every attack.

    Subclasses set :attr:`kind`, declare their hyperparameters (papers' defaults) as the fields of a
    ``@dataclass(kw_only=True, eq=False)`` (keyword-only; attacks compare by identity), and implement
    :meth:`_run`. An attack with ``eps`` and ``norm`` (a field, or a class attribute where the norm is fixed)
    gets :attr:`threat` from here. Inputs and outputs are float ``(B, C, H, W)`` in ``[0, 1]``; labels are
    int64 ``(B,)``.

    ``__post_init__`` converts and checks the fields: a ``norm: Norm | str`` field holds a :class:`Norm` after it
    (code that needs the type reads ``self.threat.norm``), a ``None`` default derived from another field is filled
    in there (and read through :func:`resolved`). State that is not a hyperparameter (what :meth:`fit` learns,
    caches) is a field named ``_...`` declared with ``field(init=False, repr=False)``: :meth:`config` leaves it
    out. The registry and ``--attack-args`` read the generated ``__init__``'s annotations in the module of the
    class it was made for: a subclass must import the names its inherited fields are annotated with.
    """

    kind: ClassVar[AttackKind] = AttackKind.PERTURBATION
    uses_gradients: ClassVar[bool] = True
    early_stopping: ClassVar[bool] = False
    """Whether the attack honours ``early_stop``: it can stop each sample at its first success."""
    tracks_scored: ClassVar[bool] = False
    """Whether the attack honours ``scored``: it checks that model at every iterate and keeps each sample's first
    point that fools it (a transfer attack differentiates the bare model but is scored on the defended one)."""
    averages_draws: ClassVar[bool] = False
    """Whether the attack averages a randomized model's gradients over draws itself (its own EOT, as
    AutoAttack's rand version does): the evaluator then hands it the model without its EOT wrapper."""
    per_sample_streams: ClassVar[bool] = False
    """Whether the attack honours ``sample_seeds``: it draws each sample's randomness from its own seed, so a
    sample's result does not depend on the batch it is in (batch size, sharding, resume)."""
    saves_progress: ClassVar[bool] = False
    """Whether the attack honours ``state``, a store where it saves its progress within one call (AutoAttack:
    after each of its attacks), so that a run killed mid-call resumes there instead of at the call's start."""
    task: ClassVar[str | None] = None
    """The task (:data:`robustlab.tasks.TASKS`) that scores this attack; ``None``: the victim's own task."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a hand-written ``__init__``: :meth:`config` reads the dataclass fields, so hyperparameters set
        there would be missing from reports and cache keys, and two configurations would share one run."""
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            raise TypeError(
                f"{cls.__name__} writes its own __init__: declare its hyperparameters as the fields of a "
                "@dataclass(kw_only=True, eq=False) instead (robustlab.attack.Attack says how)"
            )

    @property
    def threat(self) -> ThreatModel:
        """The threat model every output is verified against: the ``norm`` ball of radius ``eps`` (``None``:
        unbounded). An attack without those two, or with another threat model, overrides this."""
        norm: Norm | None = getattr(self, "norm", None)
        if norm is None:
            raise NotImplementedError(f"{type(self).__name__} has no norm: it must define its threat model")
        return ThreatModel(norm, getattr(self, "eps", None))

    @final
    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        generator: torch.Generator | None = None,
        early_stop: bool = False,
        sample_seeds: Tensor | None = None,
        state: RunStore | None = None,
        scored: nn.Module | None = None,
    ) -> Tensor:
        """Return adversarial examples for ``(x, y)`` against ``model``, verified and detached.

        ``early_stop`` says the caller only needs each sample misclassified once by the scored model
        (``scored``, else ``model``), as an evaluation does: attacks with :attr:`early_stopping` then stop
        a sample at its first success and return that point, which saves their remaining iterations; other
        attacks ignore it.
        ``sample_seeds`` (int64 ``(B,)``) seed each sample's own random stream in attacks with
        :attr:`per_sample_streams`; the others draw from ``generator``. ``state`` (a store
        private to this call's samples) goes to attacks that :attr:`saves_progress`. ``scored`` is the model
        the output is scored on when it is not ``model``: attacks that :attr:`tracks_scored` keep (and with
        ``early_stop`` stop at) each sample's first iterate it misclassifies; the others ignore it.
        """
        check_images(x)
        if model.training:
            raise ConfigError("the model is in training mode: attack numbers would be wrong; call model.eval()")
        if y.shape != x.shape[:1]:
            raise ConfigError(f"labels have shape {tuple(y.shape)}, expected ({x.shape[0]},)")
        if x.shape[0] == 0:
            return x.detach().clone()
        context = CallContext(
            generator=generator,
            early_stop=early_stop and self.early_stopping,
            sample_seeds=sample_seeds if self.per_sample_streams else None,
            state=state if self.saves_progress else None,
            scored=scored if self.tracks_scored else None,
        )
        x_adv = self._run(model, x.detach(), y.detach(), context).detach()
        verify(self.threat, x, x_adv)
        return x_adv

    @abstractmethod
    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        """Compute ``x_adv``; must not modify ``x`` in place. ``context`` holds what the call may use beyond its
        inputs, each part only where the attack declares the capability (the others see its default)."""

    def fit(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool = True) -> Attack:
        """Learn what a universal or task attack applies to every input (no-op for per-input attacks)."""
        return self

    def fitted(self) -> dict[str, Tensor]:
        """What :meth:`fit` learned, as tensors: stored as a unit of the run and written beside the report."""
        return {}

    def load_fitted(self, tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`fitted` returned (a resumed run, or a perturbation saved by an earlier one)."""
        return None

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

    def write(
        self, model: nn.Module, out: Path, *, seed: int, class_names: Sequence[str], run: dict[str, Any], progress: bool
    ) -> dict[str, Any]:
        """Generate into the folder ``out`` what a reader looks at (``robustlab fool``; generative attacks only).

        A rerun into ``out`` resumes what a killed one left there. ``run`` (model, weights, device...) is
        recorded in the summary, which is returned.
        """
        raise ConfigError(f"{type(self).__name__} is a {self.kind} attack: it makes no images of its own to write")

    def config(self) -> dict[str, Any]:
        """Hyperparameters as plain values (the fields, less those named ``_...``; enums as their values), recorded
        in reports and used in cache keys."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in values.items()}


def resolved(value: T | None) -> T:
    """A field whose ``None`` default (one derived from other fields: PGD's ``step_size``) ``__post_init__`` has
    replaced, typed without the ``None``.

    Example:
        >>> resolved(0.5)
        0.5
    """
    if value is None:
        raise RuntimeError("a derived hyperparameter was read before __post_init__ resolved it")
    return value


def check_images(x: Tensor) -> None:
    """Raise :class:`ConfigError` unless ``x`` is a float ``(B, C, H, W)`` batch in ``[0, 1]``."""
    if not torch.is_floating_point(x) or x.dim() != 4:
        raise ConfigError(f"images must be a float (B, C, H, W) tensor, got {tuple(x.shape)} {x.dtype}")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ConfigError("images must lie in [0, 1]: normalization belongs inside the model wrapper")


def misclassified(logits: Tensor, y: Tensor, points: Tensor, scored: nn.Module | None) -> Tensor:
    """Which ``points`` the scored model misclassifies: read off the attacked model's ``logits`` when that is the
    scored one (``scored`` is ``None``), else one forward pass of ``scored``."""
    if scored is None or not len(points):
        return logits.detach().argmax(dim=1) != y
    with torch.no_grad():
        return scored(points).argmax(dim=1) != y


@dataclass(kw_only=True, eq=False)
class GenerativeAttack(Attack):
    """An attack that makes images from nothing (:meth:`generate`), scored by its :attr:`task`: no input to
    perturb, so no budget (the threat model is unbounded) and nothing to call it on."""

    kind = AttackKind.GENERATIVE

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(Norm.UNBOUNDED)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        raise ConfigError(
            f"{type(self).__name__} is a generative attack: it makes images from nothing; call generate(model)"
        )

    @abstractmethod
    def generate(
        self, model: nn.Module, *, generator: torch.Generator, store: Any = None, progress: bool = True
    ) -> dict[str, Tensor]: ...


@dataclass(kw_only=True, eq=False)
class UniversalPerturbation(Attack):
    """One additive perturbation ``delta`` for every input, learned by :meth:`fit` (or loaded from a file).

    Subclasses implement :meth:`_learn`. Applying it is ``clamp(x + delta, 0, 1)``: the same ``delta`` for
    every input, so the perturbation of an input differs from ``delta`` only where the box clips it.

    Args:
        load: a safetensors file written by an earlier run (``delta`` of shape ``(1, C, H, W)``): it is
            used instead of fitting, so a saved perturbation can be evaluated on other data or models.
    """

    kind: ClassVar[AttackKind] = AttackKind.UNIVERSAL

    load: str | None = None
    _delta: Tensor | None = field(default=None, init=False, repr=False)

    @abstractmethod
    def _learn(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool) -> Tensor:
        """Return ``delta`` ``(1, C, H, W)`` within the threat model."""

    def fit(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool = True) -> Attack:
        if self.load is not None:
            from robustlab.cache import load_weights

            try:
                self.load_fitted(load_weights(Path(self.load).expanduser()))
            except (OSError, KeyError, ValueError) as error:  # safetensors raises ValueError-like errors
                raise ConfigError(f"cannot load the perturbation {self.load}: {error}") from None
            return self
        self.load_fitted({"delta": self._learn(model, dataset, generator=generator, progress=progress)})
        return self

    def fitted(self) -> dict[str, Tensor]:
        return {} if self._delta is None else {"delta": self._delta}

    def load_fitted(self, tensors: dict[str, Tensor]) -> None:
        delta = tensors["delta"].detach().cpu().float()
        if delta.dim() != 4 or delta.shape[0] != 1:
            raise ConfigError(f"a universal perturbation has shape (1, C, H, W), got {tuple(delta.shape)}")
        verify(self.threat, torch.full_like(delta, 0.5), (0.5 + delta).clamp(0, 1))
        self._delta = delta

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        if self._delta is None:
            raise ConfigError(f"{type(self).__name__} is universal: fit it (or pass load=PATH) before applying it")
        if self._delta.shape[1:] != x.shape[1:]:
            raise ConfigError(f"the perturbation is {tuple(self._delta.shape[1:])}, the images {tuple(x.shape[1:])}")
        return (x + self._delta.to(x)).clamp(0, 1)

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in super().config().items() if k != "load" or v is not None}


ATTACKS: Registry[Attack] = Registry("attack")
