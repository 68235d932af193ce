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

from typing import Any

import torch
from robustlab.attacks._caption import CaptionAttack, as_captioner, goal_features, pgd_until_reached
from torch import Tensor, nn

from robustlab.attack import ATTACKS
from robustlab.captioning import Captioner, tokenize
from robustlab.errors import ConfigError

__all__ = ["CaptionDecoderPGD", "CaptionFeaturePGD", "CaptionNoise"]


def _check_steps(steps: int, restarts: int) -> tuple[int, int]:
    if steps < 1 or restarts < 1:
        raise ConfigError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    return steps, restarts


@ATTACKS.register(
    "caption_feature_pgd",
    summary="Per-image L∞ PGD matching the captioner encoder's features of a target image (task).",
    stochastic=True,
)
class CaptionFeaturePGD(CaptionAttack):
    """Feature-matching PGD: ``min ‖φ(x') − φ_t‖²`` per image, with ``φ_t`` found by ``fit`` as for ``caption_gan``.

    Args:
        target: the caption to force; keyword: words to inject (exactly one of the two).
        eps: L∞ budget; steps: iterations per restart (random start, step ``2.5·eps/steps`` after Madry et al.).
        restarts: random starts; each image stops at the first whose greedy caption reaches the goal.
        n_targets: target images whose features are averaged (1 for a caption, 8 for keywords by default).
        scan: fit images searched for target images.
    """

    def __init__(
        self,
        *,
        target: str | None = None,
        keyword: str | None = None,
        eps: float = 8 / 255,
        steps: int = 50,
        restarts: int = 1,
        n_targets: int | None = None,
        scan: int = 2000,
    ) -> None:
        super().__init__(target=target, keyword=keyword, eps=eps)
        self.steps, self.restarts = _check_steps(steps, restarts)
        self.n_targets = n_targets if n_targets is not None else (1 if target is not None else 8)
        self.scan = scan
        self._goal: Tensor | None = None

    def fit(
        self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool = True
    ) -> CaptionFeaturePGD:
        """Find the target features (no training: the optimisation is per image)."""
        captioner = as_captioner(model)
        self.check_vocabulary(captioner)
        self._goal = goal_features(
            captioner, dataset, target=self.target, keyword=self.keyword, n_targets=self.n_targets, scan=self.scan
        )
        return self

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None) -> Tensor:
        if self._goal is None:
            raise ConfigError("caption_feature_pgd has no target features yet: call fit(captioner, fit_dataset) first")
        captioner, goal = as_captioner(model), self._goal
        return pgd_until_reached(
            captioner,
            x,
            lambda x_adv: (captioner.encoder(x_adv) - goal).pow(2).sum(),
            goal=self,
            steps=self.steps,
            restarts=self.restarts,
            generator=generator,
        )


@ATTACKS.register(
    "caption_decoder_pgd",
    summary="End-to-end L∞ PGD on Show-and-Fool's logit-margin caption losses, through the decoder (task).",
    stochastic=True,
)
class CaptionDecoderPGD(CaptionAttack):
    """Show-and-Fool-style attack through the whole captioner (no target image needed; ``fit`` is a no-op).

    Args:
        target: the caption to force; keyword: words to inject (exactly one of the two).
        eps: L∞ budget; steps: iterations per restart (random start, step ``2.5·eps/steps``).
        restarts: random starts; each image stops at the first whose greedy caption reaches the goal.
        margin: κ, how far past the runner-up logit a word is pushed before its loss stops counting.
    """

    def __init__(
        self,
        *,
        target: str | None = None,
        keyword: str | None = None,
        eps: float = 8 / 255,
        steps: int = 50,
        restarts: int = 1,
        margin: float = 5.0,
    ) -> None:
        super().__init__(target=target, keyword=keyword, eps=eps)
        (self.steps, self.restarts), self.margin = _check_steps(steps, restarts), margin

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None) -> Tensor:
        captioner = as_captioner(model)
        self.check_vocabulary(captioner)
        return pgd_until_reached(
            captioner,
            x,
            lambda x_adv: self._loss(captioner, x_adv),
            goal=self,
            steps=self.steps,
            restarts=self.restarts,
            generator=generator,
        )

    def _loss(self, captioner: Captioner, x_adv: Tensor) -> Tensor:
        if self.target is not None:
            tokens = captioner.encode_captions([self.target] * len(x_adv))
            wanted = tokens[:, 1:]  # target words, <end>, then padding
            margins = _margins(captioner(x_adv, tokens[:, :-1]), wanted).clamp_min(-self.margin)
            return (margins * (wanted != 0)).sum()
        with torch.no_grad():
            current = captioner.encode_captions(captioner.caption(x_adv))
        logits = captioner(x_adv, current[:, :-1])
        loss = x_adv.new_zeros(())
        for word in tokenize(self.keyword or ""):
            wanted = torch.full_like(current[:, 1:], captioner.vocab.index(word))
            loss = loss + _margins(logits, wanted).clamp_min(-self.margin).amin(1).sum()
        return loss


def _margins(logits: Tensor, wanted: Tensor) -> Tensor:
    """``max_{k≠w} z(k) − z(w)`` per step, :math:`(B, T)`: negative once ``w`` is the decoder's top word."""
    chosen = logits.gather(2, wanted.unsqueeze(2)).squeeze(2)
    others = logits.scatter(2, wanted.unsqueeze(2), float("-inf")).amax(2)
    return others - chosen


@ATTACKS.register(
    "caption_noise", summary="Random ±eps signs on every pixel: the floor for caption attacks (task).", stochastic=True
)
class CaptionNoise(CaptionAttack):
    """Random-noise baseline: ``x' = clip(x + eps·s, 0, 1)`` with independent uniform signs ``s`` (no gradients).

    Example:
        >>> attack = CaptionNoise(target="a small red star on sky", eps=8 / 255)
        >>> x = torch.rand(2, 3, 8, 8)
        >>> x_adv = attack._run(nn.Identity(), x, torch.zeros(2), generator=torch.Generator().manual_seed(0))
        >>> float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
        True
    """

    uses_gradients = False

    def __init__(self, *, target: str | None = None, keyword: str | None = None, eps: float = 8 / 255) -> None:
        super().__init__(target=target, keyword=keyword, eps=eps)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None) -> Tensor:
        signs = torch.randint(2, x.shape, generator=generator, device=generator.device if generator else x.device)
        return (x + self.eps * (2 * signs.to(x) - 1)).clamp(0, 1)
