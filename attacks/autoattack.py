"""AutoAttack, standard version (Croce & Hein, ICML 2020), built from torchattacks' components."""

from __future__ import annotations

from typing import Any

import torch
import torchattacks
from robustlab.attacks._torchattacks import MultiTargetedAttack, torchattacks_norm
from robustlab.attacks.apgd import APGD
from robustlab.attacks.apgdt import APGDT
from robustlab.attacks.square import Square
from torch import Tensor, nn

from robustlab.attack import ATTACKS, Attack
from robustlab.threat import Norm, ThreatModel

__all__ = ["FABT", "AutoAttack"]


class FABT(MultiTargetedAttack):
    """Targeted FAB (Croce & Hein, ICML 2020, https://arxiv.org/abs/1907.02044) over the top ``n_target_classes``.

    Minimum-norm: samples it cannot break within ``eps`` come back unchanged.
    """

    def _build_targeted(self, model: nn.Module, n_classes: int, seed: int) -> Any:
        return torchattacks.FAB(
            model,
            norm=torchattacks_norm(self.norm),
            eps=self.eps,
            steps=self.steps,
            n_restarts=self.n_restarts,
            seed=seed,
            multi_targeted=True,
            n_classes=n_classes,
        )


@ATTACKS.register(
    "autoattack", summary="AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square; per-sample worst case.", stochastic=True
)
class AutoAttack(Attack):
    """Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks,
    https://arxiv.org/abs/2003.01690.

    The reference *standard* version: APGD-CE (100 iterations), APGD-T (DLR, 9 target classes, 100
    iterations), FAB-T (9 target classes, 100 iterations) and Square (5000 queries), each run only on
    the samples every earlier component failed on. torchattacks' own ``AutoAttack`` uses 10 APGD
    iterations and all n-1 target classes, so it is not used. Deterministic given the generator.

    Args:
        eps: budget in [0, 1] pixel units.
        norm: ``linf`` or ``l2``.
    """

    def __init__(self, *, eps: float = 8 / 255, norm: Norm | str = Norm.LINF) -> None:
        self.eps = eps
        self.norm = Norm(norm)

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, self.eps)

    def components(self) -> list[Attack]:
        """The attacks in the order the reference runs them."""
        return [
            APGD(eps=self.eps, norm=self.norm, steps=100, loss="ce"),
            APGDT(eps=self.eps, norm=self.norm, steps=100, n_target_classes=9),
            FABT(eps=self.eps, norm=self.norm, steps=100, n_restarts=1, n_target_classes=9),
            Square(eps=self.eps, norm=self.norm, n_queries=5000),
        ]

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None) -> Tensor:
        x_adv = x.clone()
        with torch.no_grad():
            robust = model(x).argmax(dim=1) == y
        for attack in self.components():
            index = robust.nonzero().flatten()
            if len(index) == 0:
                break
            candidate = attack(model, x[index], y[index], generator=generator)
            with torch.no_grad():
                fooled = model(candidate).argmax(dim=1) != y[index]
            x_adv[index[fooled]] = candidate[fooled]
            robust[index[fooled]] = False
        return x_adv
