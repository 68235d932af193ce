"""The sanity gate: numbers from a model that cannot be right are flagged, whatever the model.

A checkpoint fed at the wrong size or normalization, with another class order or ``--num-classes``,
still produces numbers, just at chance level; a broken model returns NaN logits or the same output for
every input. Each finding is a ``sanity.*`` :class:`Diagnostic` whose message names the usual causes;
``robustlab eval --strict`` turns them into exit 2.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from robustlab.components import ComponentSpec
from robustlab.models.loading import ModelSpec
from robustlab.reports.report import Diagnostic, Row

if TYPE_CHECKING:
    from robustlab.data.adv import AdversarialDataset

__all__ = ["CAUSES", "adversarial_data", "chance_level", "output_checks", "randomized"]

CAUSES = (
    "usual causes: the input size (--image-size), the normalization (--mean/--std), the class order "
    "(class folders are numbered in sorted name order) and --num-classes"
)


def randomized(model: nn.Module, x: Tensor) -> bool:
    """Whether two forward passes on the same inputs disagree (noise in ``forward``, a random defense)."""
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


def output_checks(model: nn.Module, x: Tensor, *, names: tuple[str, str]) -> list[Diagnostic]:
    """NaN or infinite logits, and outputs that do not depend on the input, on a batch of clean images."""
    with torch.no_grad():
        logits = model(x).float()
    found = []
    bad = (~torch.isfinite(logits)).any(1)
    if bad.any():
        found.append(
            Diagnostic(
                "sanity.nonfinite_logits",
                f"{int(bad.sum())} of {len(x)} inputs give NaN or infinite logits: every number of this model is "
                f"meaningless; {CAUSES}, or a broken checkpoint",
                *names,
            )
        )
    elif len(x) > 1 and not torch.equal(x[0].expand_as(x), x):
        spread = (logits - logits[:1]).abs().amax()
        if float(spread) <= 1e-6 * (1 + float(logits.abs().amax())):
            found.append(
                Diagnostic(
                    "sanity.constant_outputs",
                    f"the outputs are the same for {len(x)} different inputs: the model ignores its input; {CAUSES}",
                    *names,
                )
            )
    return found


def chance_level(rows: list[Row], labels: Tensor, *, names: tuple[str, str], fed: str = "") -> list[Diagnostic]:
    """Flag a clean accuracy that a constant guess of the most frequent class would match.

    Near chance: below the majority class's share plus the larger of half the uniform chance rate (at most
    10 points) and two binomial standard errors, so a 20-sample run is not flagged for noise, nor a
    1000-class one missed: 15% on 10 balanced classes, 60% on two, 0.15% on 1000.
    """
    clean = next((row.clean_acc for row in rows if row.clean_acc is not None and row.classifies), None)
    if clean is None or len(labels) == 0:
        return []
    counts = torch.bincount(labels.long())
    classes = int((counts > 0).sum())
    if classes < 2:  # a constant guess of the one class is right, so only a model that never guesses it is flagged
        return [] if clean > 0 else [_one_class(len(labels), names, fed)]
    majority = float(counts.max()) / len(labels)
    margin = max(min(0.5 / classes, 0.1), 2 * math.sqrt(majority * (1 - majority) / len(labels)))
    if clean >= majority + margin:
        return []
    message = (
        f"clean accuracy {clean:.1%} on {classes} classes is at chance level (the most frequent class is "
        f"{majority:.1%} of the {len(labels)} samples): the model is not seeing what it was trained on"
        + (f" ({fed})" if fed else "")
        + f"; {CAUSES}"
    )
    return [Diagnostic("sanity.chance_level", message, *names)]


def adversarial_data(
    rows: list[Row], data: AdversarialDataset, indices: Tensor, *, names: tuple[str, str], exact: bool
) -> list[Diagnostic]:
    """The check that replaces :func:`chance_level` on a dataset ``generate`` made, whose low accuracy is the point.

    The model and defense that made the images must score on them what ``generate`` recorded (``exact``:
    a deterministic model, scored in one pass); a mismatch means the model is not fed as it was then.
    Any other model is only subject to :func:`output_checks`.
    """
    clean = next((row.clean_acc for row in rows if row.clean_acc is not None and row.classifies), None)
    if clean is None or not exact or made_by(data) != names:
        return []
    recorded = data.recorded_accuracy(indices)
    if abs(clean - recorded) < 1e-9:
        return []
    message = (
        f"{names[0]} scores {clean:.1%} on the adversarial images it was attacked into, where generate recorded "
        f"{recorded:.1%} for the same model and defense: it is not fed as it was then; {CAUSES}"
    )
    return [Diagnostic("sanity.adversarial_mismatch", message, *names)]


def made_by(data: AdversarialDataset) -> tuple[str, str]:
    """The labels (as ``eval`` names them) of the model and the defense whose attack made ``data``'s images."""
    model, defense = data.recorded_victim()
    params = tuple(tuple(param) for param in defense.get("params", []))
    model_label = ModelSpec(str(model.get("name", "?")), weights=model.get("weights")).label()
    return model_label, ComponentSpec(str(defense.get("name", "none")), params).label()


def _one_class(n: int, names: tuple[str, str], fed: str) -> Diagnostic:
    message = (
        f"clean accuracy 0.0% on {n} samples of one class: the model never predicts the only class in the data"
        + (f" ({fed})" if fed else "")
        + f"; {CAUSES}"
    )
    return Diagnostic("sanity.chance_level", message, *names)
