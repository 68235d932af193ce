"""Caption-targeting GAN (Aafaq, Akhtar, Liu, Shah, Mian, 2021, arXiv 2107.03050): steer a captioner's encoder.

From the paper's abstract: the attack targets the CNN encoder's hidden layer that feeds the RNN decoder, with a
GAN whose perturbed images' deep features mimic those of a target, so the decoder writes a caption the attacker
chose (a full target caption, or injected keywords), without back-propagating through the language model.

No official code exists; the rest is our reconstruction (docs: ``specs/caption-gan.md``):

- Generator: AdvGAN's (Xiao et al., IJCAI 2018, arXiv 1801.02610) encoder-decoder, c8-d16-d32, four residual
  blocks, u16-u8-c3, instance norm; ``δ = eps·tanh(G(x))`` and ``x' = clip(x + δ, 0, 1)`` (inside the budget by
  construction; ``Attack.__call__`` still verifies it).
- Loss: ``mean‖φ(x') − φ_t‖² + λ_adv·L_GAN + λ_pert·max(0, ‖δ‖₂ − c)``, with ``φ`` the encoder map the
  attention decoder reads and ``φ_t`` the features of a target image (:func:`goal_features`). The GAN term is
  AdvGAN's least-squares loss against a small PatchGAN discriminator (λ_adv = 0.01 as the spec suggests; 0 turns
  the discriminator off). The feature term is a mean rather than a sum over elements (scale-free learning rate).
- ``objective`` (ours, issue #27): the feature term may instead pool the map or match the nearest goal image,
  which do not ask the source to copy one image's layout; ``decoder`` replaces it by the frozen decoder's
  margin loss (then the decoder is in the graph: outside the paper's threat model, an upper reference).
- One generator per goal, trained on the fit split (the spec's "trained per target" option), by default. With
  ``goals`` set (ours, issue #27; the paper's setting of one model for many targets), one
  :class:`ConditionedGenerator` is trained over all of them at once, each training image drawn with a random goal,
  and serves each of them: ``target``/``keyword`` says which goal a call aims at (:meth:`CaptionGAN.with_goal`
  switches goal without refitting).
- With a feature objective the decoder is never in the graph: only the encoder's features are differentiated.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from robustlab.attacks._caption import (
    FEATURE_OBJECTIVES,
    CaptionAttack,
    as_captioner,
    check_objective,
    dataset_images,
    decoder_margin_loss,
    default_targets,
    feature_distance,
    goal_bank,
)
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab.attack import ATTACKS, CallContext, resolved
from robustlab.captioning import Captioner, tokenize
from robustlab.errors import ConfigError
from robustlab.seeding import global_rng_seeded

__all__ = [
    "CaptionGAN",
    "ConditionedGenerator",
    "PatchDiscriminator",
    "PerturbationGenerator",
    "goal_codes",
    "parse_goals",
]


def _conv_in(cin: int, cout: int, *, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2), nn.InstanceNorm2d(cout), nn.ReLU()
    )


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_in(channels, channels), nn.Conv2d(channels, channels, 3, padding=1), nn.InstanceNorm2d(channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class PerturbationGenerator(nn.Module):
    """AdvGAN's generator: ``[0, 1]`` images -> unbounded perturbation logits of the same shape (~40k parameters).

    Example:
        >>> PerturbationGenerator()(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            _conv_in(channels, w),
            _conv_in(w, 2 * w, stride=2),
            _conv_in(2 * w, 4 * w, stride=2),
            *[_Residual(4 * w) for _ in range(4)],
            nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1),
            nn.InstanceNorm2d(2 * w),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1),
            nn.InstanceNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _FiLMNorm(nn.Module):
    """Conditional instance norm (Dumoulin et al., ICLR 2017, arXiv 1610.07629): instance norm, then a per-channel
    scale and shift computed from the goal code. The linear map starts at zero, so an untrained layer is plain
    instance norm (scale 1, shift 0)."""

    def __init__(self, channels: int, code_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels)
        self.film = nn.Linear(code_dim, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        scale, shift = self.film(code)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


class _FiLMConv(nn.Module):
    def __init__(self, cin: int, cout: int, code_dim: int, *, stride: int = 1, transposed: bool = False) -> None:
        super().__init__()
        self.conv: nn.Module = (
            nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
            if transposed
            else nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        )
        self.norm = _FiLMNorm(cout, code_dim)

    def forward(self, x: Tensor, code: Tensor, *, relu: bool = True) -> Tensor:
        out = self.norm(self.conv(x), code)
        return F.relu(out) if relu else out


class _FiLMResidual(nn.Module):
    def __init__(self, channels: int, code_dim: int) -> None:
        super().__init__()
        self.first, self.second = _FiLMConv(channels, channels, code_dim), _FiLMConv(channels, channels, code_dim)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        out: Tensor = x + self.second(self.first(x, code), code, relu=False)
        return out


class ConditionedGenerator(nn.Module):
    """:class:`PerturbationGenerator` conditioned on a goal code :math:`(B, K)`: every instance norm is a FiLM layer.

    Why FiLM and not the code as extra input channels: each of the generator's layers is instance-normalised, which
    removes any per-channel constant, so a goal code tiled over the image as channels would be subtracted by the
    first norm (all but its effect at the zero-padded border). Scaling and shifting *after* each norm is how one
    style-transfer network serves many styles (conditional instance norm); here it lets one network serve many goals.

    Example:
        >>> ConditionedGenerator(code_dim=5)(torch.rand(2, 3, 32, 32), torch.rand(2, 5)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, channels: int = 3, width: int = 8, *, code_dim: int) -> None:
        super().__init__()
        w = width
        self.down = nn.ModuleList(
            [
                _FiLMConv(channels, w, code_dim),
                _FiLMConv(w, 2 * w, code_dim, stride=2),
                _FiLMConv(2 * w, 4 * w, code_dim, stride=2),
            ]
        )
        self.residual = nn.ModuleList([_FiLMResidual(4 * w, code_dim) for _ in range(4)])
        self.up = nn.ModuleList(
            [
                _FiLMConv(4 * w, 2 * w, code_dim, transposed=True),
                _FiLMConv(2 * w, w, code_dim, transposed=True),
            ]
        )
        self.out = nn.Conv2d(w, channels, 3, padding=1)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        for layer in self.down:
            x = layer(x, code)
        for layer in [*self.residual, *self.up]:
            x = layer(x, code)
        out: Tensor = self.out(x)
        return out


def goal_codes(banks: list[Tensor]) -> Tensor:
    """The code :math:`(G, D)` each goal conditions a :class:`ConditionedGenerator` on: its goal images' pooled
    features, less the mean over the goals, over their mean norm.

    The pooled features of different goals share most of their length (on the embedded captioner: norms about 8.5,
    differences about 4), and a FiLM layer starts from zero: centring and scaling gives every goal a code of
    length about 1 in its own direction, which the conditioning tells apart from the first step.

    Example:
        >>> codes = goal_codes([torch.ones(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)])
        >>> codes.tolist()
        [[0.7071067690849304, 0.7071067690849304], [-0.7071067690849304, -0.7071067690849304]]
    """
    pooled = torch.stack([bank.mean((0, 2, 3)) for bank in banks])
    centred = pooled - pooled.mean(0, keepdim=True)
    return centred / centred.norm(dim=1).mean().clamp_min(1e-12)


def parse_goals(text: str) -> list[tuple[str | None, str | None]]:
    """``(target, keyword)`` pairs of a ``goals`` string: ``;``-separated ``target:CAPTION`` or ``keyword:WORDS``.

    Example:
        >>> parse_goals("keyword: stripes; target:a large orange ring on bricks")
        [(None, 'stripes'), ('a large orange ring on bricks', None)]
    """
    goals: list[tuple[str | None, str | None]] = []
    for entry in (e.strip() for e in text.split(";")):
        mode, sep, words = (part.strip() for part in entry.partition(":"))
        if not sep or mode not in ("target", "keyword") or not tokenize(words):
            raise ConfigError(f"each of goals must be 'target:CAPTION' or 'keyword:WORDS', got {entry!r}")
        goals.append((words, None) if mode == "target" else (None, words))
    keys = [(t is None, tokenize(t or k or "")) for t, k in goals]
    if len({(m, tuple(w)) for m, w in keys}) != len(keys):
        raise ConfigError(f"goals repeats a goal: {text!r}")
    return goals


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: one realism score per image patch (AdvGAN's discriminator, narrowed)."""

    def __init__(self, channels: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(channels, w, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),
            nn.InstanceNorm2d(2 * w),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 1, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@ATTACKS.register(
    "caption_gan",
    summary="Caption-targeting GAN: a generator matches the captioner encoder's features of a target (task).",
    stochastic=False,
)
@dataclass(kw_only=True, eq=False)
class CaptionGAN(CaptionAttack):
    """Controlled Caption Generation for Images Through Adversarial Attacks, https://arxiv.org/abs/2107.03050.

    L∞, white-box on the encoder only, one generator forward pass per image once ``fit`` has trained it on the fit
    split. See the module docstring for what is from the paper and what is our reconstruction.

    Args:
        target: the caption to force (targeted mode).
        keyword: words to inject into the caption (keyword mode).
        eps: L∞ budget in ``[0, 1]`` pixel units.
        steps: generator updates in ``fit``.
        batch_size: fit images per update.
        lr: Adam learning rate of generator and discriminator (AdvGAN uses 1e-3; ours learns too slowly in
            the few hundred steps of a CPU run: 1e-2 changed 59% of captions where 1e-3 changed 21%).
        adv_weight: λ_adv of the least-squares GAN term (0: no discriminator).
        pert_weight: λ_pert of the hinge on ``‖δ‖₂`` (0 by default: the tanh bound already holds the L∞ budget).
        pert_bound: the hinge's ``c`` in L2 pixel units.
        objective: what the generator learns to reach: one of
            :data:`~robustlab.attacks._caption.FEATURE_OBJECTIVES` (the encoder's features only; ``features`` is
            the paper's), or ``decoder``: Show-and-Fool's margin loss through the frozen decoder (its parameters
            never learn, but gradients pass through it: no longer the paper's encoder-only attack).
        margin: κ of the ``decoder`` objective.
        n_targets: goal images found per goal (1 for a caption matched as ``features``, 8 otherwise, by default;
            with ``goals``, 1 only if every goal is such a caption).
        scan: fit images searched for target images and used to train the generator.
        goals: ``None`` (the default): one generator for the one goal ``target``/``keyword``. Otherwise the goals
            one :class:`ConditionedGenerator` is trained for, ``;``-separated ``target:CAPTION`` or
            ``keyword:WORDS`` entries (:func:`parse_goals`); ``target``/``keyword`` must be one of them and picks
            the goal the attack aims every input at. The code each goal conditions on is its goal images' pooled
            encoder features (the region-mean of :func:`~robustlab.attacks._caption.goal_bank`, the vector the
            decoder's state starts from, centred and scaled over the goals: :func:`goal_codes`): it says what
            the goal looks like to the victim, where a learned embedding per goal would only name it.
    """

    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-2
    adv_weight: float = 0.01
    pert_weight: float = 0.0
    pert_bound: float = 0.3
    objective: str = "features"
    margin: float = 5.0
    n_targets: int | None = None
    scan: int = 2000
    goals: str | None = None
    _generator: PerturbationGenerator | ConditionedGenerator | None = field(default=None, init=False, repr=False)
    _codes: Tensor | None = field(default=None, init=False, repr=False)
    _losses: list[float] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.batch_size < 1 or self.scan < 1:
            raise ConfigError("steps, batch_size and scan must be >= 1")
        check_objective(self.objective, (*FEATURE_OBJECTIVES, "decoder"))
        if self.goals is not None:
            self.goal_index  # noqa: B018  (raises ConfigError unless the goal is one of goals)
        if self.n_targets is None:
            self.n_targets = max(default_targets(t, self.objective) for t, _ in self.goal_list)

    def config(self) -> dict[str, Any]:
        values = super().config()
        return values if self.goals is not None else {k: v for k, v in values.items() if k != "goals"}

    @property
    def goal_list(self) -> list[tuple[str | None, str | None]]:
        """``(target, keyword)`` of each goal the generator serves: ``goals`` parsed, or the one goal."""
        return [(self.target, self.keyword)] if self.goals is None else parse_goals(self.goals)

    @property
    def goal_index(self) -> int:
        """Which of ``goals`` (parsed, in order) ``target``/``keyword`` names; 0 without ``goals``."""
        if self.goals is None:
            return 0
        words = tokenize(self.target or self.keyword or "")
        for index, (target, keyword) in enumerate(parse_goals(self.goals)):
            if (target is None) == (self.target is None) and tokenize(target or keyword or "") == words:
                return index
        goal = f"target:{self.target}" if self.target is not None else f"keyword:{self.keyword}"
        raise ConfigError(f"{goal!r} is not one of goals {self.goals!r}: a conditioned generator serves only those")

    def with_goal(self, *, target: str | None = None, keyword: str | None = None) -> CaptionGAN:
        """This attack aimed at another of its ``goals``, sharing the generator ``fit`` trained (no refitting)."""
        if self.goals is None:
            raise ConfigError("with_goal needs goals: a generator fitted for one goal serves only that goal")
        other = replace(self, target=target, keyword=keyword)
        other._generator, other._codes, other._losses = self._generator, self._codes, list(self._losses)
        return other

    @property
    def feature_losses(self) -> list[float]:
        """The objective's loss (feature distance, or decoder margin per image) of every ``fit`` step."""
        return list(self._losses)

    def fit(self, model: nn.Module, dataset: Any, *, generator: torch.Generator, progress: bool = True) -> CaptionGAN:
        """Train the generator on the first ``scan`` fit images to reproduce the goal's encoder features.

        With ``goals``, each training image is given a goal drawn uniformly (after its index, from ``generator``),
        the generator is conditioned on that goal's code and the loss compares it with that goal.
        """
        captioner, n_targets = as_captioner(model), resolved(self.n_targets)
        goals = [self] if self.goals is None else [self.with_goal(target=t, keyword=k) for t, k in self.goal_list]
        for goal in goals:
            goal.check_vocabulary(captioner)
        banks = [
            goal_bank(captioner, dataset, target=g.target, keyword=g.keyword, n_targets=n_targets, scan=self.scan)
            for g in goals
        ]
        device = banks[0].device
        codes = None if self.goals is None else goal_codes(banks)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with global_rng_seeded(seed):  # inits draw from the global RNG: make them a function of seed
            net: PerturbationGenerator | ConditionedGenerator = (
                PerturbationGenerator().to(device)
                if codes is None
                else ConditionedGenerator(code_dim=codes.shape[1]).to(device)
            )
            critic = PatchDiscriminator().to(device)
        opt_g = torch.optim.Adam(net.parameters(), lr=self.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(critic.parameters(), lr=self.lr, betas=(0.5, 0.999))
        pool = min(self.scan, len(dataset))
        self._losses = []
        bar = tqdm(range(self.steps), desc="caption_gan fit", disable=not progress, leave=False)
        for _ in bar:
            x = dataset_images(dataset, torch.randint(pool, (self.batch_size,), generator=generator)).to(device)
            rows = None if codes is None else torch.randint(len(goals), (len(x),), generator=generator).to(device)
            delta = self.eps * torch.tanh(_perturbation_logits(net, x, codes, rows))
            x_adv = (x + delta).clamp(0, 1)
            if self.adv_weight > 0:
                real, fake = critic(x), critic(x_adv.detach())
                loss_d = F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake))
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
            if rows is None:
                feature_loss = self._objective(captioner, x, x_adv, banks[0], self)
            else:
                parts = [(rows == g).nonzero().squeeze(1) for g in range(len(goals))]
                feature_loss = sum(
                    (
                        self._objective(captioner, x[p], x_adv[p], bank, goal) * len(p)
                        for p, bank, goal in zip(parts, banks, goals, strict=True)
                        if len(p)
                    ),
                    start=x.new_zeros(()),
                ) / len(x)
            loss = feature_loss + self.pert_weight * (delta.flatten(1).norm(dim=1) - self.pert_bound).relu().mean()
            if self.adv_weight > 0:
                judged = critic(x_adv)
                loss = loss + self.adv_weight * F.mse_loss(judged, torch.ones_like(judged))
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            self._losses.append(float(feature_loss.detach()))
            bar.set_postfix(feature=f"{self._losses[-1]:.4f}", refresh=False)
        self._generator, self._codes = net.eval().requires_grad_(False), codes
        return self

    def _objective(self, captioner: Captioner, x: Tensor, x_adv: Tensor, bank: Tensor, goal: CaptionGAN) -> Tensor:
        """The objective's loss of ``x_adv`` for ``goal``, per image (mean over the batch)."""
        if self.objective == "decoder":
            return decoder_margin_loss(captioner, x_adv, goal, self.margin) / len(x)
        with torch.no_grad():
            clean_features = captioner.encoder(x)
        return feature_distance(captioner.encoder(x_adv), bank, clean_features, self.objective).mean()

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        if self._generator is None:
            raise ConfigError("caption_gan has no generator yet: call fit(captioner, fit_dataset) first")
        rows = None if self._codes is None else torch.full((len(x),), self.goal_index, device=x.device)
        with torch.no_grad():
            return (x + self.eps * torch.tanh(_perturbation_logits(self._generator, x, self._codes, rows))).clamp(0, 1)


def _perturbation_logits(
    net: PerturbationGenerator | ConditionedGenerator, x: Tensor, codes: Tensor | None, rows: Tensor | None
) -> Tensor:
    """The generator's output for ``x``, each row conditioned on ``codes[rows]`` if the generator is conditioned."""
    if isinstance(net, ConditionedGenerator):
        if codes is None or rows is None:
            raise ConfigError("a conditioned generator needs the goal codes fit computed")
        return net(x, codes[rows])
    return net(x)
