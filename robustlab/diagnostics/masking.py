"""Gradient-masking and validity diagnostics, computed automatically for every defended run.

Each check turns a symptom from the literature into a :class:`Diagnostic` in the report: Athalye,
Carlini & Wagner (ICML 2018) warning signs (one-step beats iterative, black-box beats white-box,
larger budgets do not help, unbounded attacks do not reach 100%), unusable gradients, randomized
outputs (AutoAttack's ``checks.py``), and robustness that exists only against an attacker who ignores
the defense (Carlini et al. 2019; Tramer et al. 2020). The checks never change a number; they say
when a number should not be trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack
from robustlab.diagnostics.sanity import randomized
from robustlab.progress import advance
from robustlab.reports.report import Diagnostic, Row
from robustlab.runners import attack_and_score
from robustlab.tasks import Classification

__all__ = [
    "Probe",
    "ProbeSettings",
    "attack_gaps",
    "broken_by",
    "cheap_probes",
    "expensive_probes",
    "probe_gradient_masking",
    "threat_mode_gaps",
]

ITERATIVE_WHITE_BOX = frozenset({"pgd", "pgdl2", "apgd", "apgdt", "autoattack", "autoattack-fast", "autoattack-rand"})
"""Attacks that should be the strongest of a run: one weaker than another attack is a masking sign."""
SLACK = 0.05  # success-rate differences below this are sampling noise on a probe of ~100 samples


@dataclass(frozen=True)
class ProbeSettings:
    """Budgets and sizes of the probe attacks (kept small: they run for every defended model)."""

    eps: float = 8 / 255
    eps_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    large_eps: float = 0.5
    pgd_steps: int = 10
    square_queries: int = 300
    large_eps_max_accuracy: float = 0.05
    zero_gradient_fraction: float = 0.1
    fd_samples: int = 32
    fd_directions: int = 8
    fd_min_cosine: float = 0.5
    fd_confirm_queries: int = 1000
    noise_draws: int = 100


@dataclass(frozen=True)
class Probe:
    """One run of the masking probes: what a white-box attacker differentiates (``attacked``, the adaptive
    pipeline) and what is scored (the defended model), probe images ``x`` in ``[0, 1]`` the scored model
    classifies correctly and their labels ``y``, the budgets, the randomness of the probe attacks, and the model
    and defense names the diagnostics carry."""

    attacked: nn.Module
    scored: nn.Module
    x: Tensor
    y: Tensor
    settings: ProbeSettings
    generator: torch.Generator
    model: str = ""
    defense: str = ""

    def broken(self, name: str, *, early_stop: bool = False, **params: object) -> Tensor:
        """Which probe samples the registered attack ``name`` breaks."""
        import robustlab.attacks  # noqa: F401  (registers the probe attacks)

        attack = ATTACKS.get(name).factory(**params)
        return broken_by(attack, self.attacked, self.scored, self.x, self.y, self.generator, early_stop=early_stop)

    def diagnostics(self, found: list[tuple[str, str]]) -> list[Diagnostic]:
        """The ``(code, message)`` pairs ``found`` as ``masking.`` diagnostics of this model and defense."""
        return [Diagnostic(f"masking.{code}", message, self.model, self.defense) for code, message in found]


def probe_gradient_masking(
    attacked: nn.Module,
    scored: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    settings: ProbeSettings,
    generator: torch.Generator,
    model: str = "",
    defense: str = "",
) -> list[Diagnostic]:
    """Run the masking probes on clean-correct samples ``(x, y)``.

    Args:
        attacked: what a white-box attacker differentiates (the adaptive pipeline).
        scored: what is scored (the defended model).
        x: probe images the scored model classifies correctly, in ``[0, 1]``.
        y: their labels.
        settings: probe budgets.
        generator: randomness for the probe attacks.
        model: model name for the diagnostics.
        defense: defense name for the diagnostics.
    """
    if len(x) == 0:
        return []
    probe = Probe(attacked, scored, x, y, settings, generator, model, defense)
    return cheap_probes(probe) + expensive_probes(probe)


def cheap_probes(probe: Probe) -> list[Diagnostic]:
    """AutoAttack's ``checks.py`` flags and a gradient-health check, a few dozen forward passes: run on every
    evaluated model.

    Randomized outputs, outputs that look like probabilities instead of logits, zero or non-finite
    input gradients (a saturated softmax, a rounding step, a detached input), and gradients that are
    there but useless (:func:`shattered_gradients`).
    """
    if len(probe.x) == 0:
        return []
    random = _randomness(probe.scored, probe.x)
    found = (
        random + _probabilities(probe.scored, probe.x) + _gradients(probe.attacked, probe.x, probe.y, probe.settings)
    )
    if not random:  # a random model's finite differences are noise: EOT, not this check, is its remedy
        found += shattered_gradients(probe)
    return probe.diagnostics(found)


def gradient_agreement(
    model: nn.Module, x: Tensor, y: Tensor, *, step: float, directions: int, generator: torch.Generator
) -> Tensor:
    """Per sample, the cosine between the loss's slopes along ``directions`` random sign directions measured by
    central finite differences ``step`` apart (per pixel) and predicted by autograd; NaN where either is zero.

    A differentiable model agrees (cosine near 1) at an attack's step size; a shattered one does not: its
    gradient describes the loss over a far smaller neighbourhood than the attack moves in, or not at all.
    """
    point = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(point), y, reduction="sum")
        grad = cast("Tensor | None", torch.autograd.grad(loss, point, allow_unused=True)[0])  # None: x is unused
    if grad is None:
        return torch.full((len(x),), float("nan"))
    signs = torch.randint(0, 2, (directions, *x.shape), generator=generator).to(x) * 2 - 1
    predicted = (grad.detach()[None] * signs).flatten(2).sum(-1)  # (directions, B)
    with torch.no_grad():
        measured = torch.stack(
            [
                (
                    F.cross_entropy(model(x + step * d), y, reduction="none")
                    - F.cross_entropy(model(x - step * d), y, reduction="none")
                )
                / (2 * step)
                for d in signs
            ]
        )
    norms = predicted.norm(dim=0) * measured.norm(dim=0)
    cosine = (predicted * measured).sum(0) / norms
    return torch.where(norms > 0, cosine, torch.full_like(cosine, float("nan"))).cpu()


def shattered_gradients(probe: Probe) -> list[tuple[str, str]]:
    """Athalye et al.'s shattered gradients on a model that has gradients: finite differences disagree with
    autograd, and a short black-box attack (which never reads a gradient) confirms that gradients mislead.

    The black-box confirmation keeps a BPDA surrogate (whose gradient is not the forward's, by design, yet
    leads the attack well) from being flagged.
    """
    settings, eps = probe.settings, probe.settings.eps
    probe = replace(probe, x=probe.x[: settings.fd_samples], y=probe.y[: settings.fd_samples])
    cosine = gradient_agreement(
        probe.attacked, probe.x, probe.y, step=eps / 4, directions=settings.fd_directions, generator=probe.generator
    )
    cosine = cosine[~cosine.isnan()]
    if not len(cosine) or float(cosine.median()) >= settings.fd_min_cosine:
        return []
    pgd = _rate(probe.broken("pgd", early_stop=True, eps=eps, steps=settings.pgd_steps))
    queries = settings.fd_confirm_queries
    square = _rate(probe.broken("square", eps=eps, n_queries=queries))
    if square <= pgd + SLACK:
        return []
    return [
        (
            "shattered_gradients",
            f"finite differences disagree with autograd (median cosine {float(cosine.median()):.2f} over "
            f"{settings.fd_directions} random directions) and black-box Square ({queries} queries) "
            f"breaks {square:.0%} of the probe samples where PGD breaks {pgd:.0%}: the gradient points nowhere "
            "(a non-smooth step in forward); add --attack square or autoattack, and give the step a BPDA surrogate",
        )
    ]


def expensive_probes(probe: Probe, *, deterministic: bool = True) -> list[Diagnostic]:
    """The Athalye et al. signs measured by probe attacks (a PGD eps sweep, large eps, FGSM, Square, and on a
    ``deterministic`` model uniform noise: a random model's draws would count as noise finding errors)."""
    if len(probe.x) == 0:
        return []
    settings = probe.settings
    found = noise_sanity(probe) if deterministic else []

    def success(name: str, **params: object) -> float:
        return _rate(probe.broken(name, early_stop=False, **params))

    sweep = [success("pgd", eps=min(1.0, settings.eps * f), steps=settings.pgd_steps) for f in settings.eps_factors]
    pgd = sweep[settings.eps_factors.index(1.0)] if 1.0 in settings.eps_factors else max(sweep)
    drops = [(a, b) for a, b in pairwise(sweep) if b < a - SLACK]
    if drops:
        found.append(
            (
                "eps_not_monotone",
                f"PGD success falls as eps grows ({_percent(sweep)} over eps x "
                f"{list(settings.eps_factors)}): the attack is not optimising the defended model",
            )
        )
    large = 1 - success("pgd", eps=settings.large_eps, steps=settings.pgd_steps)
    if large > settings.large_eps_max_accuracy:
        found.append(
            (
                "large_eps_not_zero",
                f"accuracy is {large:.0%} under PGD at L∞ eps {settings.large_eps}, "
                "where any classifier can be broken: gradients are not usable",
            )
        )
    fgsm = success("fgsm", eps=settings.eps)
    if fgsm > pgd + SLACK:
        found.append(("fgsm_beats_pgd", f"one-step FGSM breaks {fgsm:.0%}, iterative PGD only {pgd:.0%}"))
    square = success("square", eps=settings.eps, n_queries=settings.square_queries)
    if square > pgd + SLACK:
        found.append(("blackbox_beats_whitebox", f"black-box Square breaks {square:.0%}, white-box PGD only {pgd:.0%}"))
    return probe.diagnostics(found)


def noise_sanity(probe: Probe) -> list[tuple[str, str]]:
    """Athalye et al.'s fourth sign: uniform noise in the eps-ball misclassifies samples PGD left correct."""
    scored, x, y, settings, generator = probe.scored, probe.x, probe.y, probe.settings, probe.generator
    pgd = probe.broken("pgd", early_stop=True, eps=settings.eps, steps=settings.pgd_steps)
    noisy = torch.zeros_like(pgd)
    with torch.no_grad():
        for draw in range(settings.noise_draws):
            noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x) * settings.eps  # for all: one stream
            left = (~pgd & ~noisy).nonzero().flatten()  # only these can change the answer
            if len(left):
                noisy[left] = scored((x[left] + noise[left]).clamp(0, 1)).argmax(dim=1) != y[left]
            advance("noise draws", draw + 1, settings.noise_draws)
    missed = (noisy & ~pgd).double().mean().item()
    if missed <= SLACK:
        return []
    return [
        (
            "noise_beats_gradient",
            f"uniform noise in the eps-ball ({settings.noise_draws} draws) misclassifies {missed:.0%} of the probe "
            "samples that PGD left correct: the gradient does not lead the attack; add --attack square or autoattack",
        )
    ]


def broken_by(
    attack: Attack,
    attacked: nn.Module,
    scored: nn.Module,
    x: Tensor,
    y: Tensor,
    generator: torch.Generator,
    *,
    early_stop: bool = False,
) -> Tensor:
    """Which clean-correct probe samples ``attack`` breaks, differentiating ``attacked``, scored on ``scored``."""
    everything = torch.ones_like(y, dtype=torch.bool)
    task = Classification()
    result = attack_and_score(
        attack, attacked, scored, task, x, y, {"pred": y}, everything, generator, early_stop=early_stop
    )
    broken: Tensor = result["adv_pred"] != y
    return broken


def _rate(broken: Tensor) -> float:
    return broken.double().mean().item()


def _randomness(scored: nn.Module, x: Tensor) -> list[tuple[str, str]]:
    if not randomized(scored, x):
        return []
    return [
        (
            "randomized_outputs",
            "the model gives different outputs for the same input: attacks need EOT "
            "and single-draw accuracy varies between runs",
        )
    ]


def _probabilities(scored: nn.Module, x: Tensor) -> list[tuple[str, str]]:
    with torch.no_grad():
        out = scored(x).float()
    if not torch.isfinite(out).all() or out.min() < 0 or out.max() > 1:
        return []
    if not torch.allclose(out.sum(1), torch.ones(len(out), device=out.device), atol=1e-3):
        return []
    return [
        (
            "softmax_outputs",
            "the model returns probabilities (rows in [0, 1] summing to 1), not logits: cross-entropy on them "
            "has flat gradients and understates attacks; return the logits",
        )
    ]


def _gradients(attacked: nn.Module, x: Tensor, y: Tensor, settings: ProbeSettings) -> list[tuple[str, str]]:
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(attacked(x), y, reduction="sum")
    grad = cast("Tensor | None", torch.autograd.grad(loss, x, allow_unused=True)[0])  # None: x is unused
    if grad is None:
        return [("zero_gradients", "the input gets no gradient at all (detached or non-differentiable pipeline)")]
    flat = grad.flatten(1)
    broken = (~torch.isfinite(flat)).any(1) | (flat.abs().amax(1) == 0)
    fraction = broken.double().mean().item()
    if fraction > settings.zero_gradient_fraction:
        return [
            (
                "zero_gradients",
                f"{fraction:.0%} of inputs have zero or non-finite gradients (a saturated softmax, a rounding "
                "step, a detached input): gradient attacks overstate robustness; run autoattack, and give a "
                "defense a BPDA surrogate",
            )
        ]
    return []


def threat_mode_gaps(rows: list[Row], *, threshold: float = 0.10) -> list[Diagnostic]:
    """Compare transfer and adaptive rows of the same attack.

    Transfer robust accuracy far above adaptive means the defense only works against an attacker who
    ignores it. Adaptive above transfer means the attacker differentiating the whole pipeline does
    worse than one who ignores it: its gradients are masked.
    """
    adaptive = {(r.model, r.defense, r.task, r.attack, r.threat): r for r in rows if r.threat_mode == "adaptive"}
    found = []
    for row in rows:
        other = adaptive.get((row.model, row.defense, row.task, row.attack, row.threat))
        if row.threat_mode != "transfer" or other is None or row.robust_acc is None or other.robust_acc is None:
            continue
        where = (
            f"{row.attack} at {row.threat}: {row.robust_acc:.0%} robust under transfer, {other.robust_acc:.0%} adaptive"
        )
        if row.robust_acc - other.robust_acc > threshold:
            message = f"{where}; robust only against an oblivious attacker who ignores {row.defense}"
            found.append(Diagnostic("oblivious_only", message, row.model, row.defense))
        elif other.robust_acc - row.robust_acc > SLACK:
            message = f"{where}; attacking through the defense does worse than ignoring it: masked gradients"
            found.append(Diagnostic("masking.adaptive_weaker_than_transfer", message, row.model, row.defense))
    return found


def attack_gaps(rows: list[Row], *, threshold: float = 0.10) -> list[Diagnostic]:
    """Athalye et al.'s signs read off the rows when several attacks ran on one model, defense and threat mode.

    An iterative white-box attack far weaker than another attack (one-step FGSM, black-box Square, or
    AutoAttack beating PGD) means its gradients are not usable: its number overstates robustness.
    """
    groups: dict[tuple[str, str, str, str, str], list[Row]] = {}
    for row in rows:  # rows of other tasks (a downstream head each) score other labels: never compared
        if row.robust_acc is not None and row.kind == "perturbation":
            groups.setdefault((row.model, row.defense, row.task, row.threat_mode, row.threat), []).append(row)
    found = []
    for (model, defense, _, _, threat), group in groups.items():
        strongest = min(group, key=lambda r: r.robust_acc or 0.0)
        weakest = max(group, key=lambda r: r.robust_acc or 0.0)
        gap = (weakest.robust_acc or 0.0) - (strongest.robust_acc or 0.0)
        if gap <= threshold or _attack_name(weakest) not in ITERATIVE_WHITE_BOX:
            continue  # a one-step or black-box attack that is weaker is expected
        base = _attack_name(strongest)
        code = {"fgsm": "fgsm_beats_iterative", "square": "blackbox_beats_whitebox"}.get(base, "attacks_disagree")
        message = (
            f"at {threat}, {weakest.attack} leaves {weakest.robust_acc:.1%} robust but {strongest.attack} only "
            f"{strongest.robust_acc:.1%}: trust the worst case; a gap this large is a sign "
            "of gradient masking"
        )
        found.append(Diagnostic(f"masking.{code}", message, model, defense))
    return found


def _attack_name(row: Row) -> str:
    """The registered name in a row's attack label (``pgd`` of ``pgd(steps=20)``)."""
    return row.attack.split("(", 1)[0].split("[", 1)[0]


def _percent(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.0%}" for v in values) + "]"
