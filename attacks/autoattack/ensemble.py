"""AutoAttack (Croce & Hein, ICML 2020): the standard, rand and plus versions of the reference.

Every component runs on robustlab's own loops with the reference's arithmetic: APGD and APGD-T
(:mod:`robustlab.attacks.autoattack._apgd`) and FAB (:mod:`robustlab.attacks.autoattack._fab`) stop a sample at its
first success and run all target classes of a sample in one batch; Square (:mod:`robustlab.attacks.autoattack._square`)
stops a sample once it is misclassified, as the reference's does. Each component attacks only the samples
every earlier one failed on, as the reference does, and the attack counts how many each one broke. Every
random draw is a sample's own, so a sample's result does not depend on its batch, on early stopping, or
on a resume that skipped the components it had finished.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from robustlab.attacks._torchattacks import derive_seed
from robustlab.attacks.autoattack._apgd import RowLoop, RowLoopAttack
from robustlab.attacks.autoattack._fab import FABConfig, fab
from robustlab.attacks.autoattack.apgd import APGD
from robustlab.attacks.autoattack.apgdt import APGDT
from robustlab.attacks.autoattack.square import Square
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack, CallContext
from robustlab.errors import ConfigError
from robustlab.seeding import stream_seed
from robustlab.threat import Norm

__all__ = ["FABT", "AutoAttack", "AutoAttackPlus", "AutoAttackRand", "rand_components", "standard_components"]

EOT_DRAWS = 20
"""Forward passes each gradient of the rand version averages."""


def standard_components(eps: float, norm: Norm, *, steps: int = 100, queries: int = 5000) -> list[tuple[str, Attack]]:
    """The standard version's attacks in the reference's order and names; ``steps`` and ``queries`` are the
    reference's budgets unless a smaller run (a test) asks for less."""
    return [
        ("apgd-ce", APGD(eps=eps, norm=norm, steps=steps, loss="ce")),
        ("apgd-t", APGDT(eps=eps, norm=norm, steps=steps, n_target_classes=9)),
        ("fab-t", FABT(eps=eps, norm=norm, steps=steps, n_restarts=1, n_target_classes=9)),
        ("square", Square(eps=eps, norm=norm, n_queries=queries, rescale_schedule=False)),
    ]


def rand_components(eps: float, norm: Norm, *, steps: int = 100) -> list[tuple[str, Attack]]:
    """The rand version's attacks: APGD on both losses, each gradient averaged over :data:`EOT_DRAWS` draws."""
    return [(f"apgd-{loss}", APGD(eps=eps, norm=norm, steps=steps, loss=loss, eot=EOT_DRAWS)) for loss in ("ce", "dlr")]


@dataclass(kw_only=True, eq=False)
class FABT(RowLoopAttack):
    """FAB (Croce & Hein, ICML 2020, https://arxiv.org/abs/1907.02044), targeted over the top ``n_target_classes``.

    With ``targeted=False``, untargeted FAB (restarts after the first start from a random point), as in
    AutoAttack's plus version. Runs on robustlab's own loop (:mod:`robustlab.attacks.autoattack._fab`): every
    (sample, target, restart) is a row of one batch, a sample stops at its first misclassified iterate
    within ``eps`` (which changes no result), and samples it cannot break within ``eps`` come back unchanged.
    """

    eps: float
    norm: Norm | str
    steps: int
    n_restarts: int
    n_target_classes: int
    targeted: bool = True

    def __post_init__(self) -> None:
        self.norm = Norm(self.norm)

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, loop: RowLoop) -> Tensor:
        targets = self.n_target_classes if self.targeted else 0
        c = FABConfig(self.threat.norm, self.eps, self.steps, self.n_restarts, targets)
        return fab(model, x, y, c, loop)[0]


@ATTACKS.register(
    "autoattack", summary="AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square; per-sample worst case.", stochastic=True
)
@dataclass(kw_only=True, eq=False)
class AutoAttack(Attack):
    """Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks,
    https://arxiv.org/abs/2003.01690.

    The reference *standard* version: APGD-CE (100 iterations), APGD-T (targeted DLR, 9 target
    classes, 100 iterations), FAB-T (9 target classes, 100 iterations) and Square (5000 queries, its
    square-size schedule not rescaled), each run only on the samples every earlier component failed on.
    torchattacks' own ``AutoAttack`` differs (10 APGD iterations, all n-1 target classes, a rescaled
    Square schedule), so it is not used. Each component draws each sample's randomness from the sample's
    seed (the evaluator's, else one drawn from the generator and the sample's position). With a ``state``
    store each component's result is saved as it finishes, so a killed run resumes at the first component
    that had not. After a call, :attr:`broken_by` holds per sample the index of the component that broke it
    (-1: none); :attr:`broken` counts, per component, the samples it broke over every call so far.

    Args:
        eps: budget in [0, 1] pixel units.
        norm: ``linf`` or ``l2``.
    """

    early_stopping = True
    tracks_scored = True
    per_sample_streams = True
    saves_progress = True

    eps: float = 8 / 255
    norm: Norm | str = Norm.LINF
    _broken: Counter[str] = field(default_factory=Counter, init=False, repr=False)
    _broken_by: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long), init=False, repr=False)
    _last_seeds: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long), init=False, repr=False)
    """The samples' streams in the last call, for what a subclass runs after the cascade."""

    def __post_init__(self) -> None:
        self.norm = Norm(self.norm)

    @property
    def broken_by(self) -> Tensor:
        """Per sample of the last call: which component broke it (index in :meth:`component_names`); -1: none."""
        return self._broken_by

    @property
    def broken(self) -> dict[str, int]:
        """Samples each component broke (those it was given that every earlier component had failed on)."""
        return {name: self._broken[name] for name, _ in self.components()}

    def component_names(self) -> list[str]:
        """The components' names, in order: :attr:`broken_by` indexes them."""
        return [name for name, _ in self.components()]

    def components(self) -> list[tuple[str, Attack]]:
        """The attacks in the order the reference runs them, with the reference's names."""
        return standard_components(self.eps, self.threat.norm)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, context: CallContext) -> Tensor:
        sample_seeds, state, scored = context.sample_seeds, context.state, context.scored
        if sample_seeds is None:  # a direct call: streams numbered by position in the batch
            base = derive_seed(context.generator)
            sample_seeds = torch.tensor([stream_seed(base, f"s{i}") for i in range(len(x))], dtype=torch.long)
        seeds = self._last_seeds = sample_seeds.cpu()
        x_adv = x.clone()
        self._broken_by = torch.full_like(y, -1)
        judge = model if scored is None else scored
        with torch.no_grad():
            robust = judge(x).argmax(dim=1) == y
        for position, (name, attack) in enumerate(self.components()):
            index = robust.nonzero().flatten()
            if len(index) == 0:
                break
            key = f"{position}-{name}"
            saved = state.get(key) if state is not None else None
            if saved is None:
                saved = self._attack_remaining(model, x, y, index, attack, seeds, key, context.early_stop, scored)
                if state is not None:
                    state.put(key, saved)
            fooled = saved["fooled"].to(y.device)
            x_adv[fooled] = saved["x_adv"].to(x)
            robust[fooled] = False
            self._broken_by[fooled] = position
            self._broken[name] += len(fooled)
        return x_adv

    @staticmethod
    def _attack_remaining(
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        index: Tensor,
        attack: Attack,
        seeds: Tensor,
        key: str,
        early_stop: bool,
        scored: nn.Module | None,
    ) -> dict[str, Tensor]:
        """Run one component on the samples of ``index``; return those it broke (``fooled``: misclassified by
        ``scored``, else ``model``) and their points.

        Each sample gets the component its own stream (from the sample's seed and ``key``), so neither the
        batch nor the components that ran before (or were read back from a killed run's state) change it.
        """
        if not attack.per_sample_streams:
            raise ConfigError(f"AutoAttack's {key} draws its randomness per batch: its components must draw per sample")
        component_seeds = torch.tensor([stream_seed(int(seeds[i]), key) for i in index.tolist()], dtype=torch.long)
        if isinstance(attack, RowLoopAttack) and x.device.type != "cpu":
            # On a device the caller's batch bounds the rows (sample x target) differentiated at once. On a CPU,
            # where a batch of rows costs what its rows cost one after another, big batches only lose cache (FAB-T
            # on 34 synth-at samples: 98.8 s at 63 rows, 89.9 s at 27, the reference 93.7 s): there the loops keep
            # their default, the samples they are given, which is the reference's batch per target.
            attack.max_rows = len(x)
        candidate = attack(
            model, x[index], y[index], early_stop=early_stop, sample_seeds=component_seeds, scored=scored
        )
        with torch.no_grad():
            fooled = (model if scored is None else scored)(candidate).argmax(dim=1) != y[index]
        return {"fooled": index[fooled], "x_adv": candidate[fooled]}


@ATTACKS.register(
    "autoattack-rand",
    summary="AutoAttack for randomized defenses: APGD-CE and APGD-DLR with EOT over 20 draws.",
    stochastic=True,
)
class AutoAttackRand(AutoAttack):
    """The reference's *rand* version, for randomized defenses: APGD-CE then APGD-DLR, 100 iterations,
    each gradient the mean over 20 forward passes (Expectation over Transformation).

    It averages the draws itself, so the evaluator hands it the random model, not its EOT wrapper (which
    would multiply the 20 passes by ``--eot-samples``).
    """

    averages_draws = True

    def components(self) -> list[tuple[str, Attack]]:
        return rand_components(self.eps, self.threat.norm)


@ATTACKS.register(
    "autoattack-plus",
    summary="AutoAttack plus: APGD-CE/DLR with 5 restarts, FAB, Square, APGD-T, FAB-T (the strongest, slowest).",
    stochastic=True,
)
class AutoAttackPlus(AutoAttack):
    """The reference's *plus* version: APGD-CE and APGD-DLR with 5 restarts, untargeted FAB with 5
    restarts, Square (5000 queries), then APGD-T and FAB-T over 9 target classes."""

    def components(self) -> list[tuple[str, Attack]]:
        eps, norm = self.eps, self.norm
        return [
            ("apgd-ce", APGD(eps=eps, norm=norm, steps=100, loss="ce", n_restarts=5)),
            ("apgd-dlr", APGD(eps=eps, norm=norm, steps=100, loss="dlr", n_restarts=5)),
            ("fab", FABT(eps=eps, norm=norm, steps=100, n_restarts=5, n_target_classes=9, targeted=False)),
            ("square", Square(eps=eps, norm=norm, n_queries=5000, rescale_schedule=False)),
            ("apgd-t", APGDT(eps=eps, norm=norm, steps=100, n_target_classes=9)),
            ("fab-t", FABT(eps=eps, norm=norm, steps=100, n_restarts=1, n_target_classes=9)),
        ]
