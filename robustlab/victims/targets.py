"""Victims: what the attacker differentiates and what is scored, per threat mode.

A plain classifier is attacked and scored as itself. Behind a defense, *transfer* attacks the bare
model and scores the defended one (the seeds' gray-box protocol) and *adaptive* attacks the whole
defended pipeline (BPDA through non-differentiable steps, EOT over random ones). An encoder with
downstream heads is one :class:`Target` per head: per-input attacks differentiate encoder and head
(the white-box upper bound), universal attacks are fitted once on the encoder alone and scored on
every head they never saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from robustlab.attack import Attack
from robustlab.data import load_dataset
from robustlab.data.base import ImageDataset
from robustlab.defense import EOT, Defense, ThreatMode
from robustlab.preprocessing import preprocessing_of

__all__ = [
    "NO_MODE",
    "SUCCESS_RULES",
    "Target",
    "attacked_models",
    "classifier_targets",
    "downstream_targets",
    "frozen",
    "prepare_defense",
]

NO_MODE = "-"


@dataclass
class Target:
    """One scored module of a victim.

    Attributes:
        scored: the module whose outputs the task scores (the defended model, or one downstream head).
        attacked: threat mode -> the module a per-input attack differentiates.
        fit_on: threat mode -> the module a universal or task attack is fitted against.
        dataset: the test data, labelled for this target.
        task: the task that scores per-input and universal attacks on it: ``classification``, and for a
            downstream head ``prediction_change`` (the same metrics plus the share of predictions changed,
            the AdvEncoder paper's attack success rate).
        head: the downstream task's name for a head of an encoder, else ``""``.
        early_stop: whether a sample may stop at the first point that fools ``scored``: not on a randomized
            model, whose next draw may score that point correct. Under ``transfer`` the attack checks
            ``scored`` at each iterate of its run on the bare model; elsewhere the attacked module computes
            the scored function (through BPDA's forward pass), so its own logits say it.
        draws: forward passes each input is scored over (more than one on a randomized model).
    """

    scored: nn.Module
    attacked: dict[str, nn.Module]
    fit_on: dict[str, nn.Module]
    dataset: ImageDataset
    task: str = "classification"
    head: str = ""
    early_stop: bool = True
    names: tuple[str, str] = field(default=("", ""))
    draws: int = 1

    def tracks_scored(self, mode: str) -> bool:
        """Whether attacks in ``mode`` must check :attr:`scored` themselves: it is not the module they attack."""
        return self.early_stop and mode == ThreatMode.TRANSFER.value

    def success_rule(self, attack: Attack) -> str:
        """Which point of ``attack``'s run is scored on this target (a key of :data:`SUCCESS_RULES`)."""
        if self.draws > 1:
            return "over-draws"
        return "first-fooling" if attack.tracks_scored else "returned-point"


SUCCESS_RULES = {
    "first-fooling": "each sample's first iterate that fools the scored model (checked at every step)",
    "returned-point": "the point the attack returned (a one-step attack, or one that does not expose its iterates)",
    "over-draws": "the point the attack returned, correct only when every scoring draw of the random model is",
}
"""What a row's ``success_rule`` says about the point each sample was scored at."""


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with no parameter requiring a gradient."""
    module.eval()
    module.requires_grad_(False)
    return module


def prepare_defense(defense: Defense, model: nn.Module, data: str, *, seed: int, progress: bool) -> None:
    """Put ``defense`` on the model's device and train it, if it learns, on the train split of ``data``.

    ``eval``, ``generate`` and ``train-defense`` all come through here, seeded alike, so for the same
    defense, model, data and seed they reach the same cached weights.
    """
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    if isinstance(defense, nn.Module):
        defense.to(device)
    if type(defense).fit is Defense.fit:
        return
    train = load_dataset(
        data, split="train", image_size=getattr(model, "input_size", None), preprocessing=preprocessing_of(model)
    )
    defense.fit(model, train, generator=torch.Generator().manual_seed(seed), progress=progress)


def attacked_models(
    model: nn.Module, defense: Defense, modes: tuple[ThreatMode, ...], *, eot_samples: int
) -> dict[str, nn.Module]:
    """The model the attacker differentiates, per threat mode (one mode, ``-``, without a defense)."""
    if not defense.changes_model:
        return {NO_MODE: model}
    adaptive: nn.Module = frozen(defense.wrap(model, adaptive=True))
    if defense.randomized:
        adaptive = EOT(adaptive, eot_samples).eval()
    choice = {ThreatMode.TRANSFER: model, ThreatMode.ADAPTIVE: adaptive}
    return {mode.value: choice[mode] for mode in modes}


def classifier_targets(
    model: nn.Module,
    defense: Defense,
    dataset: ImageDataset,
    modes: tuple[ThreatMode, ...],
    *,
    eot_samples: int,
    names: tuple[str, str],
) -> list[Target]:
    """A classifier (or any module scored as one) behind ``defense``: one target, a module per threat mode."""
    attacked = attacked_models(model, defense, modes, eot_samples=eot_samples)
    return [
        Target(
            scored=frozen(defense.wrap(model)),
            attacked=attacked,
            fit_on=attacked,
            dataset=dataset,
            names=names,
        )
    ]


def downstream_targets(
    encoder: nn.Module, heads: dict[str, nn.Module], datasets: dict[str, ImageDataset], *, names: tuple[str, str]
) -> list[Target]:
    """An encoder scored through downstream heads it was not attacked through: one target per head."""
    return [
        Target(
            scored=head,
            attacked={NO_MODE: head},
            fit_on={NO_MODE: encoder},
            dataset=datasets[task],
            task="prediction_change",
            head=task,
            names=names,
        )
        for task, head in heads.items()
    ]
