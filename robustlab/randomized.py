"""Models whose outputs are random: attacked through EOT, without early stop, scored over several draws.

A model with noise in ``forward`` (or a randomized defense) breaks two shortcuts of an evaluation:
early stop keeps the first iterate that fooled *one* forward pass, which a fresh draw then scores as
robust (11-25 points of overstated robustness measured at 8/255), and a single gradient is the
gradient of one draw. Every evaluated model is therefore checked (two forward passes on the same
inputs disagree) and, when random, evaluated the way Athalye et al. (2018) and AutoAttack's ``rand``
version prescribe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack
from robustlab.components import ComponentSpec
from robustlab.defense import EOT
from robustlab.diagnostics.sanity import randomized
from robustlab.reports.report import Diagnostic
from robustlab.victims import Target

__all__ = ["RANDOMIZED_ALTERNATIVES", "attacked_by", "for_randomized", "randomized_version", "through_eot"]

RANDOMIZED_ALTERNATIVES = {"autoattack": "autoattack-rand", "audit": "audit-rand"}
"""Attacks with a version for randomized models, used instead when that version is registered."""


def for_randomized(
    target: Target,
    attacks: Sequence[tuple[ComponentSpec, Attack]],
    x: Tensor,
    *,
    eot_samples: int,
    draws: int,
) -> tuple[Target, list[tuple[ComponentSpec, Attack]], list[Diagnostic]]:
    """``target`` and ``attacks`` as they must be run when ``target.scored`` is random on ``x``, else unchanged."""
    if not randomized(target.scored, x):
        return target, list(attacks), []
    attacked = {mode: through_eot(module, x, eot_samples) for mode, module in target.attacked.items()}
    swapped = [randomized_version(spec, attack) for spec, attack in attacks]
    changed = [
        f"{old.label()} -> {new.label()}" for (old, _), (new, _) in zip(attacks, swapped, strict=True) if old != new
    ]
    message = (
        f"the model gives different outputs for the same input: attacks ran without early stop, through EOT over "
        f"{eot_samples} forward passes, and each input is scored over {draws} draws (correct only when every draw is)"
        + (f"; {', '.join(changed)}" if changed else "")
    )
    diagnostic = Diagnostic("randomized", message, *target.names)
    return replace(target, attacked=attacked, early_stop=False, draws=draws), swapped, [diagnostic]


def attacked_by(attack: Attack, module: nn.Module) -> nn.Module:
    """What ``attack`` differentiates: ``module``, less its EOT wrapper for an attack that does its own EOT."""
    return module.model if attack.averages_draws and isinstance(module, EOT) else module


def through_eot(module: nn.Module, x: Tensor, eot_samples: int) -> nn.Module:
    """``module`` averaged over ``eot_samples`` forward passes when it is random on ``x``, else ``module``."""
    if isinstance(module, EOT) or not randomized(module, x):
        return module  # already averaged, or deterministic (the bare model under transfer)
    return EOT(module, eot_samples).eval()


def randomized_version(spec: ComponentSpec, attack: Attack) -> tuple[ComponentSpec, Attack]:
    """The registered randomized-model version of an attack (looked up at run time), else the attack itself."""
    name = RANDOMIZED_ALTERNATIVES.get(spec.name)
    if name is None or name not in ATTACKS:
        return spec, attack
    params = ATTACKS.get(name).params()
    new = ComponentSpec(name, tuple((k, v) for k, v in spec.params if k in params))
    return new, new.build(ATTACKS)
