"""Victims: the kinds of model ``--task`` names (:mod:`.base`) and the targets each is scored through.

Importing the package registers the built-in kinds: ``classification``, ``captioning`` and ``downstream``.
"""

from robustlab.victims import classification, downstream
from robustlab.victims.base import VICTIMS, TargetRequest, Victim, VictimOptions
from robustlab.victims.targets import (
    NO_MODE,
    SUCCESS_RULES,
    Target,
    attacked_models,
    classifier_targets,
    downstream_targets,
    frozen,
    prepare_defense,
)

__all__ = [
    "NO_MODE",
    "SUCCESS_RULES",
    "VICTIMS",
    "Target",
    "TargetRequest",
    "Victim",
    "VictimOptions",
    "attacked_models",
    "classification",
    "classifier_targets",
    "downstream",
    "downstream_targets",
    "frozen",
    "prepare_defense",
]
