"""``autoattack-fast``: the standard ensemble's verdict on the same samples at a fraction of its work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from robustlab.attacks.autoattack._apgd import best_rows_per_sample
from robustlab.attacks.autoattack.ensemble import AutoAttack
from robustlab.attacks.autoattack.fast import AutoAttackFast
from torch import Tensor, nn

from robustlab.attack import ATTACKS

N = 4


def test_best_rows_per_sample_keeps_the_k_best_rows_of_each_sample() -> None:
    owner = torch.tensor([0, 0, 0, 1, 1, 2])
    score = torch.tensor([1.0, 3.0, 3.0, 5.0, 2.0, -7.0])
    assert best_rows_per_sample(owner, score).tolist() == [False, True, False, True, False, True]
    assert best_rows_per_sample(owner, score, 2).tolist() == [False, True, True, True, True, True]


def test_registered_after_the_standard_components() -> None:
    fast = ATTACKS.get("autoattack-fast").factory(eps=8 / 255, norm="l2")
    assert isinstance(fast, AutoAttack) and fast.threat == AutoAttack(eps=8 / 255, norm="l2").threat
    assert fast.component_names() == ["apgd-ce", "apgd-t"]
    apgdt = dict(fast.components())["apgd-t"]
    assert apgdt.settings().focus == 2 and apgdt.settings().n_targets == 5  # type: ignore[attr-defined]


@contextmanager
def _counted(model: nn.Module) -> Iterator[list[float]]:
    """Forward+backward passes through ``model`` (a plain forward counts a third), as the benchmarks count work."""
    work = [0.0]

    def count(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        work[0] += len(args[0]) * (1.0 if torch.is_grad_enabled() else 1 / 3)

    handle = model.register_forward_hook(count)
    try:
        yield work
    finally:
        handle.remove()


@pytest.mark.slow  # the standard ensemble's FAB-T and Square on two survivors: 6.4 minutes at load 11
def test_fast_breaks_what_standard_breaks_at_a_fifth_of_the_work(
    trained_model: nn.Module, synth_batch: tuple[Tensor, Tensor]
) -> None:
    # At 4/255 two of these four samples survive APGD-CE: the later components decide both the verdict and the cost.
    x, y = synth_batch[0][:N], synth_batch[1][:N]
    seeds = torch.arange(N)
    robust, work = {}, {}
    for name, ensemble in (("standard", AutoAttack), ("fast", AutoAttackFast)):
        with _counted(trained_model) as counted:
            x_adv = ensemble(eps=4 / 255)(trained_model, x, y, early_stop=True, sample_seeds=seeds)
        work[name] = counted[0] / N
        with torch.no_grad():
            robust[name] = trained_model(x_adv).argmax(1) == y
    assert 0 < int(robust["standard"].sum()) < N, "the budget should leave samples on both sides"
    assert (robust["fast"] & ~robust["standard"]).nonzero().flatten().tolist() == []
    assert work["fast"] <= work["standard"] / 5
