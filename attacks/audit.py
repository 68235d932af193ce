"""The minimum automated evaluation of a defense (evaluation-validity.md §7) as one attack: ``--attack audit``.

A reviewer asks for AutoAttack (its rand version on a randomized model), many steps with restarts on two
losses, a black-box attack, a transfer attack and the ε and step curves. ``audit`` is AutoAttack's cascade
with more components, so it inherits what the cascade does right: each component attacks only the samples
every earlier one failed on (the row is the per-sample worst case over all of them), each sample keeps its
first point that fools the scored model, each draws from its own stream, and a killed run resumes after
the last finished component. The transfer attack is the evaluator's ``transfer`` threat mode (the audit
crafted on the bare model, scored on the defended one); :func:`robustlab.diagnostics.convergence.audit_verdicts` joins
the modes per sample. The curves are measured beside the cascade on every attacked sample: APGD-CE at
each ε factor and at each step count, each sample's result kept as ``sweep_broken`` (one column a point).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import torch
from robustlab.attacks.autoattack.apgd import APGD
from robustlab.attacks.autoattack.ensemble import AutoAttack, rand_components, standard_components
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack, CallContext
from robustlab.errors import ConfigError
from robustlab.threat import Norm  # noqa: F401  (Audit's generated __init__ resolves the inherited "Norm | str" here)

__all__ = ["Audit", "AuditRand"]


def _numbers(name: str, text: str) -> tuple[Fraction, ...]:
    """``"1/4,1/2,2"`` as positive fractions, or a :class:`ConfigError` naming the parameter."""
    try:
        values = tuple(Fraction(part.strip()) for part in text.split(",") if part.strip())
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{name} takes comma-separated numbers such as 1/2,2, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise ConfigError(f"{name} must be positive, got {text!r}")
    return values


@ATTACKS.register(
    "audit",
    summary="AutoAttack + APGD-CE/DLR 200 steps x 5 restarts + Square 5000, per-sample worst case, ε/step curves.",
    stochastic=True,
)
@dataclass(kw_only=True, eq=False)
class Audit(AutoAttack):
    """The minimum automated evaluation per defense, one row: the per-sample worst case over AutoAttack
    standard (APGD-CE, APGD-T, FAB-T, Square with ``queries``), then APGD (PGD with AutoAttack's step-size
    schedule) on cross-entropy and on DLR with ``steps`` iterations x ``restarts`` restarts.

    Beside it, on every attacked sample, the curves: APGD-CE (``aa_steps`` iterations) at ``eps`` times each
    of ``eps_factors``, and at ``eps`` with each of ``sweep_steps`` iterations. The row's
    ``broken_by_NAME`` says which component broke how many samples: what the components after AutoAttack
    broke is the convergence verdict (:func:`robustlab.diagnostics.convergence.audit_verdicts`).

    Args:
        eps: budget in [0, 1] pixel units.
        norm: ``linf`` or ``l2``.
        steps: iterations of each restart of the CE and DLR runs (200).
        restarts: their random restarts (5).
        queries: Square's query budget (5000).
        aa_steps: iterations of AutoAttack's APGD-CE, APGD-T and FAB-T, and of the ε-sweep (100).
        eps_factors: the ε sweep, multiples of ``eps`` (``1/4,1/2,2,4``).
        sweep_steps: the step sweep, APGD-CE iterations at ``eps`` (``10,25,50,100``).
    """

    eot = 1
    """Forward passes each gradient averages (the rand version's 20)."""

    steps: int = 200
    restarts: int = 5
    queries: int = 5000
    aa_steps: int = 100
    eps_factors: str = "1/4,1/2,2,4"
    sweep_steps: str = "10,25,50,100"
    _factors: tuple[Fraction, ...] = field(init=False, repr=False)
    _sweep_steps: tuple[int, ...] = field(init=False, repr=False)
    _sweep_broken: Tensor = field(default_factory=lambda: torch.empty(0, 0, dtype=torch.bool), init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.steps, self.restarts, self.queries, self.aa_steps) < 1:
            raise ConfigError("steps, restarts, queries and aa_steps must be at least 1")
        self._factors = _numbers("eps_factors", self.eps_factors)
        self._sweep_steps = tuple(int(s) for s in _numbers("sweep_steps", self.sweep_steps))

    def baseline(self) -> list[tuple[str, Attack]]:
        """The AutoAttack part: what an evaluation without the audit's extra budget would have run."""
        return standard_components(self.eps, self.threat.norm, steps=self.aa_steps, queries=self.queries)

    def components(self) -> list[tuple[str, Attack]]:
        stronger = [
            (f"apgd-{loss}-{self.steps}x{self.restarts}", self._apgd(self.eps, self.steps, loss, self.restarts))
            for loss in ("ce", "dlr")
        ]
        return [*self.baseline(), *stronger]

    def sweep_points(self) -> list[tuple[str, Attack]]:
        """The curves' points, ``eps*F`` and ``steps=S``, each an APGD-CE run on every attacked sample."""
        by_eps = [(f"eps*{f}", self._apgd(min(1.0, float(self.eps * f)), self.aa_steps)) for f in self._factors]
        by_steps = [(f"steps={s}", self._apgd(self.eps, s)) for s in self._sweep_steps]
        return [*by_eps, *by_steps]

    def sweep_names(self) -> list[str]:
        return [name for name, _ in self.sweep_points()]

    @property
    def sweep_broken(self) -> Tensor:
        """Per sample of the last call (rows) and sweep point (columns): whether that point's attack broke it."""
        return self._sweep_broken

    def _apgd(self, eps: float, steps: int, loss: str = "ce", restarts: int = 1) -> APGD:
        return APGD(eps=eps, norm=self.norm, steps=steps, loss=loss, n_restarts=restarts, eot=self.eot)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        x_adv = super()._run(model, x, y, context)
        state, early_stop, scored = context.state, context.early_stop, context.scored
        seeds = self._last_seeds
        everyone = torch.arange(len(x), device=y.device)
        columns = []
        for position, (name, attack) in enumerate(self.sweep_points()):
            key = f"sweep{position}-{name}"
            saved = state.get(key) if state is not None else None
            if saved is None:
                saved = self._attack_remaining(model, x, y, everyone, attack, seeds, key, early_stop, scored)
                saved = {"fooled": saved["fooled"]}  # the curve needs who, not where
                if state is not None:
                    state.put(key, saved)
            column = torch.zeros(len(x), dtype=torch.bool, device=y.device)
            column[saved["fooled"].to(y.device)] = True
            columns.append(column)
        self._sweep_broken = torch.stack(columns, dim=1) if columns else torch.zeros(len(x), 0, dtype=torch.bool)
        return x_adv


@ATTACKS.register(
    "audit-rand",
    summary="audit for randomized models: AutoAttack-rand + APGD-CE/DLR 200 x 5, all through EOT over 20 draws.",
    stochastic=True,
)
class AuditRand(Audit):
    """The audit of a randomized model: AutoAttack's rand version (APGD-CE and APGD-DLR, each gradient averaged
    over 20 draws) then the CE and DLR runs with ``steps`` x ``restarts``, and the curves, through the same EOT.
    Square is left out, as the rand version leaves it out: a random search judged on one draw at a time reads
    noise as progress."""

    eot = 20
    averages_draws = True

    def baseline(self) -> list[tuple[str, Attack]]:
        return rand_components(self.eps, self.threat.norm, steps=self.aa_steps)
