"""What ``--task NAME`` evaluates: a victim kind owns how a model loads and the targets it is scored through.

The evaluator is the same loop for every kind: load each model, build its targets behind each defense,
attack and score every target, aggregate. A kind says what differs: the model it loads from a
``--model`` name (a classifier, an encoder, a captioner...), the targets (one defended classifier, one
head per downstream attribute...), what it checks of its inputs, and whether the classifier diagnostics
(randomness, the sanity gate, the masking probes) apply. Adding a kind is one registered class; the core
is not edited.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar

from torch import Tensor, nn

from robustlab.data.base import ImageDataset
from robustlab.defense import Defense, ThreatMode
from robustlab.models.loading import ModelSpec
from robustlab.registry import Registry
from robustlab.victims.targets import Target

__all__ = ["VICTIMS", "EvalSettings", "TargetRequest", "Victim", "VictimOptions", "victim_option_kinds"]


@dataclass(frozen=True)
class VictimOptions:
    """A victim kind's own options (``--head`` for ``downstream``); this base has none.

    A kind with options declares a frozen subclass as its :attr:`Victim.options`; a run carries them in
    :attr:`robustlab.evaluate.EvalConfig.victim_options` and the kind reads them with ``config.options_of``.
    A new kind thus brings its options without an edit to the evaluator.
    """


OptionsT = TypeVar("OptionsT", bound=VictimOptions)


class EvalSettings(Protocol):
    """What a victim kind reads of the run's configuration (:class:`robustlab.evaluate.EvalConfig` has it all)."""

    @property
    def models(self) -> tuple[ModelSpec, ...]: ...
    @property
    def data(self) -> str: ...
    @property
    def train_data(self) -> str | None: ...
    @property
    def seed(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def threat_modes(self) -> tuple[ThreatMode, ...]: ...
    @property
    def eot_samples(self) -> int: ...
    def options_of(self, kind: type[OptionsT]) -> OptionsT: ...


@dataclass(frozen=True)
class TargetRequest:
    """One model behind one defense, as the evaluator asks a victim kind for the targets it is scored through.

    ``dataset`` is the test data the targets are scored on, ``names`` the rows' (model, defense) labels;
    ``progress``: training a defense or heads shows a bar.
    """

    model: nn.Module
    defense: Defense
    dataset: ImageDataset
    config: EvalSettings
    names: tuple[str, str]
    progress: bool


class Victim(ABC):
    """A kind of model the evaluator attacks, named by ``--task`` (:attr:`name`, also its registry name)."""

    name: ClassVar[str]
    options: ClassVar[type[VictimOptions]] = VictimOptions
    """The options this kind takes (their defaults when a run gives none)."""
    task: ClassVar[str] = "classification"
    """The task (:data:`robustlab.tasks.TASKS`) that scores its targets: the rows' ``task`` column."""
    classifier_checks: ClassVar[bool] = False
    """Whether the classifier diagnostics apply: a randomness check before attacking, the sanity gate and the
    masking probes after (they read logits and labels of the dataset's classes)."""

    @abstractmethod
    def load(self, spec: ModelSpec, config: EvalSettings, *, progress: bool) -> nn.Module:
        """The model ``spec`` names, as this kind evaluates it."""

    @abstractmethod
    def targets(self, request: TargetRequest) -> list[Target]:
        """The scored modules of the request's model behind its defense (training the defense or heads as needed)."""

    def check(self, config: EvalSettings) -> None:
        """Refuse a configuration this kind cannot run (a :class:`robustlab.errors.ConfigError`), before any work."""
        return None

    def check_inputs(
        self, model: nn.Module, spec: ModelSpec, dataset: ImageDataset, indices: Tensor, config: EvalSettings
    ) -> list[str]:
        """Check that ``model`` can take the run's inputs; return the lines that say how it is fed."""
        return []

    def row_tasks(self, config: EvalSettings) -> list[str]:
        """The ``task`` column of the rows a run of ``config`` makes (per-input and universal attacks)."""
        return [self.task]


VICTIMS: Registry[Victim] = Registry("victim")
"""The kinds ``--task`` names; ``robustlab list`` prints them as victims."""


def victim_option_kinds() -> list[type[VictimOptions]]:
    """The options types the registered kinds declare, by kind name, each once (the empty base left out)."""
    kinds = (getattr(entry.factory, "options", VictimOptions) for entry in VICTIMS.entries())
    return [kind for kind in dict.fromkeys(kinds) if kind is not VictimOptions]
