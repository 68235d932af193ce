"""Would a stronger attack have moved the number? The step, restart and loss checks of an evaluation.

Carlini et al. (2019) ask for many iterations with random restarts and more than one loss; Croce & Hein
(2020) found published numbers that fell by over 10 points under a stronger, parameter-free attack.
Here the run's strongest gradient attack is re-run on the probe samples beside APGD with five times
its steps and five restarts, on the cross-entropy and on the DLR loss. A number that moves by more
than 2 points, and by more than the paired 95% interval allows, is flagged: ``not_converged`` (more
steps or restarts break samples the run's attack left) or ``loss_gap`` (the two losses disagree).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack
from robustlab.diagnostics.masking import ITERATIVE_WHITE_BOX, broken_by
from robustlab.intervals import paired_difference, with_interval
from robustlab.reports.report import Diagnostic, Row
from robustlab.threat import Norm

__all__ = ["MIN_DROP", "STRONGER", "audit_verdicts", "convergence_checks", "strongest_gradient_attack"]

STRONGER = 5
"""How many times the steps, and how many restarts, the stronger attack has."""
MIN_DROP = 0.02
"""A change in robust accuracy below this is not worth a flag, however significant."""


def convergence_checks(
    attacked: nn.Module,
    scored: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: Attack,
    label: str,
    *,
    early_stop: bool,
    generator: torch.Generator,
    names: tuple[str, str],
    base: list[bool] | None = None,
) -> list[Diagnostic]:
    """Flag ``attack`` (the run's strongest gradient attack, ``label`` in its rows) when more steps and restarts,
    or the DLR loss instead of cross-entropy, change its robust accuracy on the clean-correct samples ``(x, y)``.

    ``base``: which of them ``attack`` left robust in the run itself (read from its per-sample results), so that
    it is not run again; ``None``: it is run here.
    """
    import robustlab.attacks  # noqa: F401  (registers APGD)

    if len(x) == 0:
        return []
    steps = int(attack.config().get("steps", 100))
    norm, eps = attack.threat.norm, attack.threat.eps
    if eps is None:
        return []  # an unbounded attack: no budget to re-run it at
    stronger = {
        loss: ATTACKS.get("apgd").factory(eps=eps, norm=norm, steps=STRONGER * steps, n_restarts=STRONGER, loss=loss)
        for loss in ("ce", "dlr")
    }

    def robust(candidate: Attack) -> list[bool]:
        robust: list[bool] = (~broken_by(candidate, attacked, scored, x, y, generator, early_stop=early_stop)).tolist()
        return robust

    base = robust(attack) if base is None else base
    ce, dlr = robust(stronger["ce"]), robust(stronger["dlr"])
    return _not_converged(label, steps, base, ce, names) + _loss_gap(ce, dlr, names)


def _not_converged(
    label: str, steps: int, base: list[bool], ce: list[bool], names: tuple[str, str]
) -> list[Diagnostic]:
    """``not_converged`` when APGD-CE with :data:`STRONGER` times the ``steps`` and restarts breaks samples that
    ``label`` left robust (``base``, and ``ce`` for APGD-CE), by more than :data:`MIN_DROP` and the noise."""
    worst = [b and c for b, c in zip(base, ce, strict=True)]
    drop = paired_difference(base, worst)
    if drop.difference > MIN_DROP and not drop.within_noise():
        message = (
            f"{label} leaves {_rate(base)} of {len(base)} probe samples robust, APGD-CE with {STRONGER}x its "
            f"{steps} steps and {STRONGER} restarts only {_rate(worst)} ({drop.describe()}): the attack had not "
            f"converged; add steps and restarts (--attack apgd --attack-arg steps={STRONGER * steps} "
            f"--attack-arg n_restarts={STRONGER}) or run autoattack"
        )
        return [Diagnostic("not_converged", message, *names)]
    return []


def _loss_gap(ce: list[bool], dlr: list[bool], names: tuple[str, str]) -> list[Diagnostic]:
    """``loss_gap`` when the stronger APGD leaves different samples robust on cross-entropy (``ce``) and on DLR
    (``dlr``), by more than :data:`MIN_DROP` and the noise."""
    gap = paired_difference(ce, dlr)
    if abs(gap.difference) > MIN_DROP and not gap.within_noise():
        misled, other, loss = ("cross-entropy", "DLR", "dlr") if gap.difference > 0 else ("DLR", "cross-entropy", "ce")
        message = (
            f"APGD leaves {_rate(ce)} robust on cross-entropy and {_rate(dlr)} on DLR ({gap.describe()}): "
            f"{misled} misleads the attack where {other} does not; add the other loss "
            f"(--attack apgd --attack-arg loss={loss}) and trust the worst case"
        )
        return [Diagnostic("loss_gap", message, *names)]
    return []


def strongest_gradient_attack(attacks: Sequence[tuple[str, Attack]], rows: Sequence[Row]) -> tuple[str, Attack] | None:
    """The iterative white-box attack (``(label, attack)``) that left the fewest samples robust in ``rows``."""
    robust: dict[str, float] = {}
    for row in rows:
        if row.robust_acc is not None:
            robust[row.attack] = min(robust.get(row.attack, 1.0), row.robust_acc)
    candidates = [
        (label, attack)
        for label, attack in attacks
        if label.split("(", 1)[0] in ITERATIVE_WHITE_BOX
        and label in robust
        and attack.threat.norm in (Norm.LINF, Norm.L2)
        and attack.threat.eps
    ]
    return min(candidates, key=lambda candidate: robust[candidate[0]], default=None)


def audit_verdicts(
    samples: Sequence[dict[str, Any]], attacks: Sequence[tuple[str, Attack]], names: tuple[str, str]
) -> list[Diagnostic]:
    """The audit's number and its convergence verdict for one target, from the run's per-sample results.

    The number is the per-sample worst case over the audit's rows in every threat mode (the adaptive audit and
    the transfer from the bare model). The verdict compares it with AutoAttack alone, the audit's first
    components: when its longer CE and DLR runs broke more than :data:`MIN_DROP` more, and more than the paired
    interval allows, the evaluation had not converged (``not_converged``), else it says so (``audit``).
    """
    found = []
    for label, attack in attacks:
        baseline = getattr(attack, "baseline", None)
        modes = {
            block["threat_mode"]: (block, entry)
            for block in samples
            if block["classifies"]
            for entry in block["attacks"]
            if entry["attack"] == label and "broken_by" in entry
        }
        if baseline is None or not modes:
            continue
        first = len(baseline())
        per_mode = [_robust_to(block, entry, first) for block, entry in modes.values()]
        worst = [all(robust) for robust in zip(*(final for final, _ in per_mode), strict=True)]
        without_extra = [all(robust) for robust in zip(*(early for _, early in per_mode), strict=True)]
        n, extra = len(worst), paired_difference(without_extra, worst)
        config = attack.config()
        runs = f"the APGD-CE/DLR runs of {config['steps']} steps x {config['restarts']} restarts"
        summary = (
            f"{label} worst case over every attack{_in_modes(list(modes))}: "
            f"{with_interval(sum(worst) / max(n, 1), n)} of {n}; AutoAttack alone {_rate(without_extra)}, {runs} "
            f"took a further {extra.describe()}"
        )
        if extra.difference > MIN_DROP and not extra.within_noise():
            found.append(Diagnostic("not_converged", f"{summary}: not converged; raise steps and restarts", *names))
        else:
            found.append(Diagnostic("audit", f"{summary}: converged", *names))
    return found


def _robust_to(block: dict[str, Any], entry: dict[str, Any], first: int) -> tuple[list[bool], list[bool]]:
    """Per sample of one mode's audit entry: robust to the whole audit, and to its first ``first`` components."""
    correct = [c == t for c, t in zip(block["clean_pred"], block["label"], strict=True)]
    final = [c and a == t for c, a, t in zip(correct, entry["adv_pred"], block["label"], strict=True)]
    early = [c and not 0 <= b < first for c, b in zip(correct, entry["broken_by"], strict=True)]
    return final, early


def _in_modes(modes: list[str]) -> str:
    return "" if modes == ["-"] else f" in the {' and '.join(modes)} modes"


def _rate(robust: list[bool]) -> str:
    return f"{sum(robust) / max(len(robust), 1):.1%}"
