"""What one evaluation is: the grid of models, defenses, attacks and threat modes, the data, the options.

Its hash (:func:`run_config_hash`) identifies a run, so a run store resumes only the run it was made for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from robustlab.cache import config_hash
from robustlab.components import ComponentSpec
from robustlab.defense import ThreatMode
from robustlab.errors import ConfigError
from robustlab.jsonfile import json_ready
from robustlab.models.loading import ModelSpec
from robustlab.victims import VICTIMS, Victim, VictimOptions
from robustlab.victims.base import victim_option_kinds

__all__ = ["EvalConfig", "run_config_hash"]

OptionsT = TypeVar("OptionsT", bound=VictimOptions)


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation grid; its hash identifies a run for resuming.

    ``task="downstream"`` evaluates each model as an encoder: its penultimate features with one head per
    attribute of the synthetic world, trained on ``data``'s train split.
    ``victim_options``: the options of victim kinds (:class:`robustlab.victims.downstream.DownstreamOptions`
    names the heads), each kind's defaults where not given; :meth:`options_of` reads them.
    ``task="captioning"`` loads each model as a captioner (:func:`robustlab.captioning.load_captioner`).
    ``fit_data`` is what universal and task attacks are fitted on (default: the train split of ``data``).
    ``subset``: which ``n`` samples (:func:`robustlab.sampling.sample_indices`; ``first`` and ``list:FILE`` are
    RobustBench's protocols).
    ``draws`` is how many forward passes score each input of a randomized model. ``diagnostics``: the
    cheap masking probes and the sanity gate on every model, the expensive probes behind defenses
    (``True``), the expensive ones on every model (``"full"``), or none (``False``).
    """

    models: tuple[ModelSpec, ...] = (ModelSpec("smallcnn"),)
    defenses: tuple[ComponentSpec, ...] = (ComponentSpec("none"),)
    attacks: tuple[ComponentSpec, ...] = (ComponentSpec("pgd"),)
    data: str = "synth"
    train_data: str | None = None
    fit_data: str | None = None
    n: int | None = 1000
    subset: str = "stratified"
    batch_size: int = 256
    seed: int = 0
    threat_modes: tuple[ThreatMode, ...] = (ThreatMode.TRANSFER, ThreatMode.ADAPTIVE)
    eot_samples: int = 20
    draws: int = 10
    device: str = "cpu"
    diagnostics: bool | str = True
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False
    task: str = "classification"
    victim_options: tuple[VictimOptions, ...] = ()

    def __post_init__(self) -> None:
        if self.n is not None and self.n <= 0:
            raise ConfigError(f"n must be a positive number of samples, got {self.n}")
        if self.subset not in ("stratified", "first") and not self.subset.startswith("list:"):
            raise ConfigError(f"subset must be stratified, first or list:FILE, got {self.subset!r}")
        if self.batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {self.batch_size}")
        if not (self.models and self.defenses and self.attacks and self.threat_modes):
            raise ConfigError("the grid needs at least one model, defense, attack and threat mode")
        if self.amp not in (None, "bf16"):
            raise ConfigError(f"--amp takes bf16, got {self.amp!r}")
        if self.compile and torch.device(self.device).type != "cuda":
            raise ConfigError("--compile is for CUDA devices; on the CPU it only adds compile time, so it is refused")
        if self.diagnostics not in (True, False, "full"):
            raise ConfigError(f"diagnostics must be on, off or full, got {self.diagnostics!r}")
        if self.draws < 1:
            raise ConfigError(f"draws must be at least 1, got {self.draws}")
        given = [type(options) for options in self.victim_options]
        if stray := [kind.__name__ for kind in given if kind not in victim_option_kinds()]:
            raise ConfigError(f"{', '.join(stray)}: the options of no registered victim kind")
        if len(set(given)) < len(given):
            raise ConfigError("victim options given twice for one kind")
        self.victim().check(self)

    def victim(self) -> Victim:
        """The kind of model ``task`` names (:data:`robustlab.victims.VICTIMS`)."""
        if self.task not in VICTIMS:
            raise ConfigError(f"task {self.task!r} is unknown; known: {', '.join(VICTIMS.names())}")
        return VICTIMS.get(self.task).factory()

    def options_of(self, kind: type[OptionsT]) -> OptionsT:
        """The run's options of type ``kind``: as given in :attr:`victim_options`, else ``kind``'s defaults."""
        given = [options for options in self.victim_options if isinstance(options, kind)]
        return given[0] if given else kind()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, recorded in the report.

        Every registered kind's options are fields of it beside the others (``heads``, ``head_kind``), whatever
        the task: a report reads as before victims owned their options, and a run's hash stays what it was.
        """
        fields = {name: value for name, value in dataclasses.asdict(self).items() if name != "victim_options"}
        for kind in victim_option_kinds():
            options = dataclasses.asdict(self.options_of(kind))
            if clash := sorted(options.keys() & fields.keys()):
                raise ConfigError(f"{kind.__name__} names {', '.join(clash)}, which a run's config already has")
            fields.update(options)
        return json_ready(fields)


def run_config_hash(config: EvalConfig) -> str:
    """Identity of a run for its store: every field that can change a number."""
    return config_hash(config.to_dict(), length=16)
