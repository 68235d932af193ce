"""Baselines beside ``caption_gan``: per-image feature PGD, an end-to-end decoder-loss attack, and random noise.

- ``caption_feature_pgd``: the same feature-matching objective as the GAN, optimised per image by L∞ PGD
  (the feature-mimicry attack of Sabour et al., ICLR 2016, arXiv 1511.05122, under an L∞ budget): an upper
  reference for what a generator that amortises the optimisation can reach.
- ``caption_decoder_pgd``: back-propagates through the language model, as Show-and-Fool does (Chen et al., ACL
  2018, arXiv 1712.02051), with its logit-margin losses: for a target caption ``Σ_t max(max_{k≠s_t} z_t(k) -
  z_t(s_t), -κ)`` under teacher forcing; for keywords ``Σ_j min_t max(max_{k≠w_j} z_t(k) - z_t(w_j), -κ)`` over
  the caption the model currently writes. Deviation: Show-and-Fool minimises these with a C&W-style L2 penalty;
  here L∞ PGD minimises them under the same budget as the other attacks, so the table compares like with like.
- ``caption_noise``: uniform random signs of size ``eps`` (a corner of the L∞ ball, the largest random change the
  budget allows): the floor every attack must clear.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from robustlab.attacks._caption import (
    FEATURE_OBJECTIVES,
    CaptionAttack,
    as_captioner,
    check_objective,
    decoder_margin_loss,
    default_targets,
    feature_distance,
    goal_bank,
    pgd_until_reached,
)
from torch import Tensor, nn

from robustlab.attack import ATTACKS, CallContext, resolved
from robustlab.captioning import Captioner
from robustlab.errors import ConfigError

__all__ = ["CaptionDecoderPGD", "CaptionFeaturePGD", "CaptionNoise"]


@dataclass(kw_only=True, eq=False)
class _CaptionPGD(CaptionAttack):
    """Base of the per-image PGD caption attacks: ``steps`` and ``restarts`` of :func:`pgd_until_reached`, run on the
    loss a subclass gives.

    Args (besides the goal and budget of :class:`~robustlab.attacks._caption.CaptionAttack`):
        steps: iterations per restart (random start, step ``2.5·eps/steps`` after Madry et al.).
        restarts: random starts; each image stops at the first whose greedy caption reaches the goal.
    """

    steps: int = 50
    restarts: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.restarts < 1:
            raise ConfigError(f"steps and restarts must be >= 1, got {self.steps} and {self.restarts}")

    def _until_reached(
        self, captioner: Captioner, x: Tensor, loss: Callable[[Tensor], Tensor], context: CallContext
    ) -> Tensor:
        return pgd_until_reached(
            captioner, x, loss, goal=self, steps=self.steps, restarts=self.restarts, generator=context.generator
        )


@ATTACKS.register(
    "caption_feature_pgd",
    summary="Per-image L∞ PGD matching the captioner encoder's features of a target image (task).",
    stochastic=True,
)
@dataclass(kw_only=True, eq=False)
class CaptionFeaturePGD(_CaptionPGD):
    """Feature-matching PGD: ``min d(φ(x'), goal)`` per image, the goal images found by ``fit`` as in ``caption_gan``.

    Args (besides those of ``_CaptionPGD``):
        objective: how features are compared with the goal's (:data:`~robustlab.attacks._caption.FEATURE_OBJECTIVES`).
        n_targets: goal images found (1 for a caption matched as ``features``, 8 otherwise, by default).
        scan: fit images searched for goal images.
    """

    objective: str = "features"
    n_targets: int | None = None
    scan: int = 2000
    _bank: Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_objective(self.objective, FEATURE_OBJECTIVES)
        if self.n_targets is None:
            self.n_targets = default_targets(self.target, self.objective)

    def fit(
        self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool = True
    ) -> CaptionFeaturePGD:
        """Find the goal images' features (no training: the optimisation is per image)."""
        captioner, n_targets = as_captioner(model), resolved(self.n_targets)
        self.check_vocabulary(captioner)
        self._bank = goal_bank(
            captioner, dataset, target=self.target, keyword=self.keyword, n_targets=n_targets, scan=self.scan
        )
        return self

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        if self._bank is None:
            raise ConfigError("caption_feature_pgd has no target features yet: call fit(captioner, fit_dataset) first")
        captioner, bank, objective = as_captioner(model), self._bank, self.objective
        with torch.no_grad():
            clean_features = captioner.encoder(x)
        return self._until_reached(
            captioner,
            x,
            lambda x_adv: feature_distance(captioner.encoder(x_adv), bank, clean_features, objective).sum(),
            context,
        )


@ATTACKS.register(
    "caption_decoder_pgd",
    summary="End-to-end L∞ PGD on Show-and-Fool's logit-margin caption losses, through the decoder (task).",
    stochastic=True,
)
@dataclass(kw_only=True, eq=False)
class CaptionDecoderPGD(_CaptionPGD):
    """Show-and-Fool-style attack through the whole captioner (no target image needed; ``fit`` is a no-op).

    Args (besides those of ``_CaptionPGD``):
        margin: κ, how far past the runner-up logit a word is pushed before its loss stops counting.
    """

    margin: float = 5.0

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        captioner = as_captioner(model)
        self.check_vocabulary(captioner)
        return self._until_reached(
            captioner, x, lambda x_adv: decoder_margin_loss(captioner, x_adv, self, self.margin), context
        )


@ATTACKS.register(
    "caption_noise", summary="Random ±eps signs on every pixel: the floor for caption attacks (task).", stochastic=True
)
class CaptionNoise(CaptionAttack):
    """Random-noise baseline: ``x' = clip(x + eps·s, 0, 1)`` with independent uniform signs ``s`` (no gradients).

    Example:
        >>> attack = CaptionNoise(target="a small red star on sky", eps=8 / 255)
        >>> x = torch.rand(2, 3, 8, 8)
        >>> generator = torch.Generator().manual_seed(0)
        >>> x_adv = attack(nn.Identity().eval(), x, torch.zeros(2, dtype=torch.long), generator=generator)
        >>> float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
        True
    """

    uses_gradients = False

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        generator = context.generator
        signs = torch.randint(2, x.shape, generator=generator, device=generator.device if generator else x.device)
        return (x + self.eps * (2 * signs.to(x) - 1)).clamp(0, 1)
