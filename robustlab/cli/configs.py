"""Each command's options as one typed, frozen object: what :mod:`robustlab.cli` parses and
:mod:`robustlab.cli.commands` runs.

A field is named as the command's click parameter (``--batch-size`` -> ``batch_size``, ``--attack`` of
eval -> ``attacks``), so a command builds its object with ``EvalOptions(**params)`` and an experiment
file's keys (``robustlab run``) are the same names. mypy checks every read of a field. Groups that
several commands take are bases: :class:`RunOptions`, :class:`ModelOptions`, :class:`ComponentOptions`.
Nothing here imports torch: the conversions that need it import it when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from robustlab.budgets import Budget
from robustlab.cli.options import build_specs
from robustlab.models.source import ModelSource

if TYPE_CHECKING:
    from robustlab.components import ComponentSpec
    from robustlab.models.loading import ModelSpec

__all__ = [
    "ComponentOptions",
    "EvalOptions",
    "FoolOptions",
    "GenerateOptions",
    "ModelOptions",
    "RunOptions",
    "TrainDefenseOptions",
    "TrainOptions",
]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """``--seed``, ``--device`` and ``--quiet``: what every command that runs a model takes."""

    seed: int
    device: str
    quiet: bool


@dataclass(frozen=True, kw_only=True)
class ModelOptions(ModelSource):
    """``--weights``, ``--num-classes`` and how the weights' inputs were prepared (``--image-size``, ``--mean``...).

    A command without the input options (``fool``) leaves them at ``None``: what the weights say.
    """

    def spec(self, name: str) -> ModelSpec:
        """The model ``--model name`` with these options names."""
        from robustlab.models.loading import ModelSpec

        return ModelSpec(name, **{field.name: getattr(self, field.name) for field in fields(ModelSource)})


@dataclass(frozen=True, kw_only=True)
class ComponentOptions:
    """``--steps``, ``--attack-arg`` and ``--defense-arg``: parameters of the attacks and defenses asked for."""

    steps: int | None
    attack_args: tuple[str, ...]
    defense_args: tuple[str, ...]

    def specs(
        self, attacks: Sequence[str], defenses: Sequence[str], *, sweep: Sequence[Budget]
    ) -> tuple[tuple[ComponentSpec, ...], tuple[ComponentSpec, ...]]:
        """Attack and defense specs of these names, each budget of ``sweep`` applied where its norm fits."""
        import robustlab.attacks
        import robustlab.defenses

        shared = {"steps": self.steps}
        return (
            build_specs(robustlab.attacks.ATTACKS, attacks, self.attack_args, shared=shared, sweep=sweep),
            build_specs(robustlab.defenses.DEFENSES, defenses, self.defense_args),
        )


@dataclass(frozen=True, kw_only=True)
class EvalOptions(RunOptions, ModelOptions, ComponentOptions):
    """``robustlab eval`` (and ``merge``, ``run``): the grid, the victim, the samples, the run, the gate.

    ``merge`` holds the shard folders ``robustlab merge`` reads; ``heads`` and ``head_kind`` are the
    downstream victim's options (:class:`robustlab.victims.downstream.DownstreamOptions`).
    """

    models: tuple[str, ...]
    attacks: tuple[str, ...]
    defenses: tuple[str, ...]
    eps: tuple[Budget, ...]
    threat_mode: str
    data: str
    train_data: str | None
    fit_data: str | None
    task: str
    heads: tuple[str, ...]
    head_kind: str
    n: int
    subset: str
    leaderboard: Path | None
    batch_size: int
    workers: int
    eot_samples: int
    amp: str | None
    channels_last: bool
    compile: bool
    diagnostics: str
    strict: bool
    draws: int
    out: Path | None
    run_dir: Path | None
    resume: bool
    shard: str | None
    tolerance: float
    margin_sigmas: float
    baseline: Path | None
    merge: tuple[Path, ...] = ()


@dataclass(frozen=True, kw_only=True)
class GenerateOptions(RunOptions, ModelOptions, ComponentOptions):
    """``robustlab generate``: one attack (behind one defense) over ``n`` samples of ``data``, into ``out``."""

    model: str
    attack: str
    eps: Budget | None
    defense: str
    threat_mode: str
    data: str
    split: str
    train_data: str | None
    n: int
    shard_size: int
    shard: str | None
    eot_samples: int
    out: Path


@dataclass(frozen=True, kw_only=True)
class TrainOptions(RunOptions):
    """``robustlab train``: a registered model trained on ``data`` (``adversarial``: none, pgd, trades)."""

    model: str
    data: str
    num_classes: int | None
    image_size: int | None
    adversarial: str
    eps: float
    attack_steps: int
    steps: int | None
    batch_size: int
    lr: float
    eval_n: int
    out: Path


@dataclass(frozen=True, kw_only=True)
class TrainDefenseOptions(RunOptions, ModelOptions):
    """``robustlab train-defense``: the learned ``defense`` trained for ``model`` on ``data``."""

    defense: str
    defense_args: tuple[str, ...]
    data: str
    model: str


@dataclass(frozen=True, kw_only=True)
class FoolOptions(RunOptions, ModelOptions):
    """``robustlab fool``: fooling images of ``model`` by ``encoding``, into ``out``."""

    model: str
    encoding: str
    generations: int | None
    population: int
    out: Path
