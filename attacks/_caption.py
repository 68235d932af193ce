"""What every caption attack shares: the goal (a target caption or keywords) and the target features it implies.

A caption attack is an :class:`~robustlab.attack.Attack` of kind ``task`` against a
:class:`~robustlab.captioning.Captioner`: ``x_adv`` stays inside an L∞ ball (verified by ``Attack.__call__``) and
is scored by :func:`robustlab.caption_metrics.caption_metrics`. Exactly one of ``target`` (the caption to force)
and ``keyword`` (space-separated words to inject) is given; the mode follows from which.

Feature-matching attacks need the encoder features of a *target image*: an image the victim itself captions as
the target (Aafaq et al., 2021: the target representation drives the controlled caption). :func:`goal_features`
finds such images among the first ``scan`` images of the fit split; for keywords it averages the features of
``n_targets`` images whose captions hold every keyword (our choice, the spec's reading of keyword injection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from robustlab.attacks._pgd import linf_random_start, linf_step
from torch import Tensor, nn

from robustlab.attack import Attack, AttackKind
from robustlab.caption_metrics import goal_reached
from robustlab.captioning import Captioner, tokenize
from robustlab.data.base import iterate_batches
from robustlab.errors import ConfigError
from robustlab.threat import Norm

__all__ = [
    "FEATURE_OBJECTIVES",
    "CaptionAttack",
    "as_captioner",
    "check_objective",
    "dataset_images",
    "decoder_margin_loss",
    "default_targets",
    "feature_distance",
    "goal_bank",
    "goal_features",
    "pgd_until_reached",
]


@dataclass(kw_only=True, eq=False)
class CaptionAttack(Attack):
    """Base of the caption attacks: checks the goal and the budget, holds them for the subclasses.

    Args:
        target: the caption to force; keyword: words to inject (exactly one of the two).
        eps: L∞ budget.
    """

    kind: ClassVar[AttackKind] = AttackKind.TASK
    norm: ClassVar[Norm] = Norm.LINF
    target: str | None = None
    keyword: str | None = None
    eps: float = 8 / 255

    def __post_init__(self) -> None:
        if (self.target is None) == (self.keyword is None):
            raise ConfigError("a caption attack takes exactly one of target (a caption) or keyword (words to inject)")
        for name, text in (("target", self.target), ("keyword", self.keyword)):
            if text is not None and not tokenize(text):
                raise ConfigError(f"{name} {text!r} has no word")
        if not 0 < self.eps <= 1:
            raise ConfigError(f"eps must be in (0, 1], got {self.eps}")

    @property
    def mode(self) -> str:
        """``targeted`` (force ``target``) or ``keyword`` (inject ``keyword``)."""
        return "targeted" if self.target is not None else "keyword"

    def check_vocabulary(self, captioner: Captioner) -> None:
        """Raise :class:`ConfigError` if the goal has a word the captioner can never write."""
        text = self.target if self.target is not None else self.keyword
        unknown = captioner.vocab.unknown(text or "")
        if unknown:
            raise ConfigError(f"{captioner.name} cannot write {', '.join(map(repr, unknown))}: not in its vocabulary")

    def config(self) -> dict[str, Any]:
        return super().config() | {"mode": self.mode}


def as_captioner(model: nn.Module) -> Captioner:
    """``model`` itself, after checking that it is a :class:`Captioner` (a one-line error otherwise)."""
    if not isinstance(model, Captioner):
        raise ConfigError(f"caption attacks need a Captioner (load_captioner), got {type(model).__name__}")
    return model


def dataset_images(dataset: Any, indices: Tensor) -> Tensor:
    """Images of ``indices`` from a caption dataset (``images_and_captions``) or an image dataset (``get_batch``...)."""
    if hasattr(dataset, "images_and_captions"):
        images: Tensor = dataset.images_and_captions(indices)[0]
        return images
    return next(iterate_batches(dataset, indices, len(indices)))[1]


@torch.no_grad()
def goal_bank(
    captioner: Captioner,
    dataset: Any,
    *,
    target: str | None,
    keyword: str | None,
    n_targets: int,
    scan: int,
    batch_size: int = 256,
) -> Tensor:
    """Encoder features :math:`(k, D, h, w)` of the first ``k <= n_targets`` fit images the victim captions as the goal.

    Raises:
        ConfigError: none of the first ``scan`` images of ``dataset`` is captioned as the goal.
    """
    device = captioner.encoder.mean.device
    found: list[Tensor] = []
    for start in range(0, min(scan, len(dataset)), batch_size):
        indices = torch.arange(start, min(start + batch_size, scan, len(dataset)))
        features = captioner.encoder(dataset_images(dataset, indices).to(device))
        captions = captioner.caption_features(features)
        found += [f for f, c in zip(features, captions, strict=True) if goal_reached(c, target=target, keyword=keyword)]
        if len(found) >= n_targets:
            return torch.stack(found[:n_targets])
    if not found:
        goal = f"captioned {target!r}" if target is not None else f"with {keyword!r} in its caption"
        raise ConfigError(
            f"no image among the first {scan} of the fit split is {goal} by {captioner.name}: "
            "choose a goal the captioner produces"
        )
    return torch.stack(found)


def goal_features(captioner: Captioner, dataset: Any, **kwargs: Any) -> Tensor:
    """Mean encoder features :math:`(1, D, h, w)` of the goal images :func:`goal_bank` finds (same arguments)."""
    return goal_bank(captioner, dataset, **kwargs).mean(0, keepdim=True)


FEATURE_OBJECTIVES = ("features", "pooled", "nearest")
"""How a feature-matching attack compares its image's features with the goal images' (``bank``):

- ``features``: the whole map of the bank's mean image, region by region (the paper's setting). With one goal
  image this asks the source to copy that image's object position and size, not just its caption.
- ``pooled``: the region-mean only (what initialises the decoder's state), so no layout is imposed.
- ``nearest``: the whole map of the goal image nearest to the source's clean features, whose layout is
  already the closest the goal allows.
"""


def check_objective(objective: str, known: tuple[str, ...]) -> str:
    """``objective`` itself if it is one of ``known`` (a one-line :class:`ConfigError` otherwise)."""
    if objective not in known:
        raise ConfigError(f"objective must be one of {', '.join(known)}, got {objective!r}")
    return objective


def default_targets(target: str | None, objective: str) -> int:
    """Goal images to find: one to match a caption's whole map (the paper's target image), else 8 to average."""
    return 1 if target is not None and objective == "features" else 8


def feature_distance(features: Tensor, bank: Tensor, clean_features: Tensor, objective: str) -> Tensor:
    """Per image, the mean squared distance :math:`(B,)` of ``features`` to the goal under ``objective``."""
    if objective == "pooled":
        return (features.mean((2, 3)) - bank.mean((0, 2, 3))).pow(2).mean(1)
    if objective == "nearest":
        goal = bank[torch.cdist(clean_features.flatten(1), bank.flatten(1)).argmin(1)]
    else:
        goal = bank.mean(0, keepdim=True)
    return (features - goal).pow(2).flatten(1).mean(1)


def decoder_margin_loss(captioner: Captioner, x_adv: Tensor, goal: CaptionAttack, margin: float) -> Tensor:
    """Show-and-Fool's logit-margin loss through the (frozen) decoder, summed over images.

    For a target caption ``Σ_t max(max_{k≠s_t} z_t(k) − z_t(s_t), −κ)`` under teacher forcing; for keywords
    ``Σ_j min_t max(max_{k≠w_j} z_t(k) − z_t(w_j), −κ)`` over the caption the model currently writes.
    """
    if goal.target is not None:
        tokens = captioner.encode_captions([goal.target] * len(x_adv))
        wanted = tokens[:, 1:]  # target words, <end>, then padding
        margins = _margins(captioner(x_adv, tokens[:, :-1]), wanted).clamp_min(-margin)
        return (margins * (wanted != 0)).sum()
    with torch.no_grad():
        current = captioner.encode_captions(captioner.caption(x_adv))
    logits = captioner(x_adv, current[:, :-1])
    loss = x_adv.new_zeros(())
    for word in tokenize(goal.keyword or ""):
        wanted = torch.full_like(current[:, 1:], captioner.vocab.index(word))
        loss = loss + _margins(logits, wanted).clamp_min(-margin).amin(1).sum()
    return loss


def _margins(logits: Tensor, wanted: Tensor) -> Tensor:
    """``max_{k≠w} z(k) − z(w)`` per step, :math:`(B, T)`: negative once ``w`` is the decoder's top word."""
    chosen = logits.gather(2, wanted.unsqueeze(2)).squeeze(2)
    others = logits.scatter(2, wanted.unsqueeze(2), float("-inf")).amax(2)
    return others - chosen


def pgd_until_reached(
    captioner: Captioner,
    x: Tensor,
    loss: Callable[[Tensor], Tensor],
    *,
    goal: CaptionAttack,
    steps: int,
    restarts: int,
    generator: torch.Generator | None,
    check_every: int = 10,
) -> Tensor:
    """L∞ PGD minimising ``loss`` (summed over images) from ``restarts`` random starts of ``steps`` steps each.

    Every ``check_every`` steps the greedy captions are read: an image whose caption reaches the goal is kept as
    it is and leaves the batch, so later steps and restarts spend their work only on the images still missing
    it (the reachability ceiling needs 200 steps x 5 restarts on CPU). An image that never reaches the goal
    keeps its last restart's point. Step size ``2.5·eps/steps`` (Madry et al.).
    """
    step = linf_step(goal.eps, 2.5 * goal.eps / steps)
    out = x.clone()
    pending = torch.arange(len(x), device=x.device)
    for _ in range(restarts):
        clean, x_adv = x[pending], linf_random_start(x[pending], goal.eps, generator)
        for done in range(1, steps + 1):
            x_adv = x_adv.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss(x_adv), x_adv)
            x_adv = step(clean, x_adv.detach(), -grad)
            if done % check_every and done < steps:
                continue
            reached = torch.tensor(
                [goal_reached(c, target=goal.target, keyword=goal.keyword) for c in captioner.caption(x_adv)],
                dtype=torch.bool,
                device=x.device,
            )
            out[pending] = x_adv
            pending, clean, x_adv = pending[~reached], clean[~reached], x_adv[~reached]
            if not len(pending):
                return out
    return out
