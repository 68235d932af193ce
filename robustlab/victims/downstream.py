"""``--task downstream``: a model as an encoder, scored through a head per attribute trained on its frozen features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from torch import nn

from robustlab.data import load_dataset
from robustlab.encoders import Encoder, HeadConfig, load_encoder, trained_heads
from robustlab.errors import ConfigError
from robustlab.models.loading import ModelSpec
from robustlab.victims.base import VICTIMS, EvalSettings, TargetRequest, Victim, VictimOptions
from robustlab.victims.targets import Target, downstream_targets, frozen, prepare_defense

__all__ = ["DEFAULT_HEADS", "Downstream", "DownstreamOptions", "with_target"]

DEFAULT_HEADS = ("shape", "color", "background", "size")
"""The synthetic world's attributes a downstream run scores when ``--head`` is not given."""


@dataclass(frozen=True)
class DownstreamOptions(VictimOptions):
    """``--head`` (repeated) and ``--head-kind``: the attributes scored, a head each, and what a head is.

    ``heads`` are attributes of the synthetic world; ``head_kind`` is ``mlp`` (three layers) or ``linear``.
    """

    heads: tuple[str, ...] = DEFAULT_HEADS
    head_kind: str = "mlp"


@VICTIMS.register("downstream", summary="A model as an encoder: a head per attribute on its frozen features (--head).")
class Downstream(Victim):
    """An encoder (:func:`robustlab.encoders.load_encoder`) with one target per head of its :class:`DownstreamOptions`.

    The heads are trained on the train split of ``train_data`` (else ``data``) labelled by their attribute. A
    defense that tunes an encoder's features (``tunes_encoders``, NMTune) replaces each head, fitted on that
    head's labels; other model-changing defenses are refused.
    """

    name = "downstream"
    options = DownstreamOptions

    def load(self, spec: ModelSpec, config: EvalSettings, *, progress: bool) -> nn.Module:
        return load_encoder(spec.name, weights=spec.weights, num_classes=spec.num_classes, progress=progress)

    def check(self, config: EvalSettings) -> None:
        if not config.options_of(DownstreamOptions).heads:
            raise ConfigError("the downstream task needs at least one head (--head shape ...)")

    def targets(self, request: TargetRequest) -> list[Target]:
        encoder, defense, config, progress = (
            cast(Encoder, request.model),
            request.defense,
            request.config,
            request.progress,
        )
        head_data = config.train_data or config.data
        options = config.options_of(DownstreamOptions)
        if defense.tunes_encoders:  # the defense is the head: one fit per attribute, on that attribute's labels
            heads: dict[str, nn.Module] = {}
            for head in options.heads:
                prepare_defense(defense, encoder, with_target(head_data, head), seed=config.seed, progress=progress)
                heads[head] = frozen(defense.wrap(encoder))
        elif defense.changes_model:
            raise ConfigError(
                f"the downstream task scores an encoder's heads; --defense {request.names[1]} does not tune an "
                "encoder's features into heads (nmtune does)"
            )
        else:
            configs = [
                HeadConfig(task=head, kind=options.head_kind, data=head_data, seed=config.seed)
                for head in options.heads
            ]
            heads = dict(trained_heads(encoder, configs, progress=progress))
        datasets = {
            head: load_dataset(with_target(config.data, head), split="test", image_size=encoder.input_size)
            for head in options.heads
        }
        return downstream_targets(encoder, heads, datasets, names=request.names)

    def row_tasks(self, config: EvalSettings) -> list[str]:
        return [f"downstream/{head}" for head in config.options_of(DownstreamOptions).heads]


def with_target(spec: str, attribute: str) -> str:
    """``synth[:opts]`` labelled by ``attribute`` (``synth:target=color``); other datasets as they are."""
    if spec.split(":", 1)[0] != "synth":
        return spec
    return f"{spec},target={attribute}" if ":" in spec else f"synth:target={attribute}"
