"""robustlab's ``autoattack`` against the authors' own package (pyautoattack, version="standard").

Same model, same samples, same budget, the reference's settings untouched: robustlab's robust accuracy
may not exceed the reference's by more than half a point. The two draw different random starts, so
they need not break the same samples; on these few samples half a point means: not one sample more.
Only ``n`` is kept small: the reference runs every component in full on the samples that resist.
"""

from __future__ import annotations

import pytest
import torch
from pyautoattack import AutoAttack as ReferenceAutoAttack
from robustlab.attacks.autoattack import AutoAttack
from torch import nn

N = 8
BUDGETS = [("linf", 8 / 255), ("linf", 2 / 255), ("l2", 0.5)]


def _robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def _assert_parity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float) -> None:
    reference = ReferenceAutoAttack(
        model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard", seed=0, device="cpu"
    )
    theirs = _robust_accuracy(model, reference.run_standard_evaluation(x, y, batch_size=len(x))[0], y)
    attack = AutoAttack(eps=eps, norm=norm)
    ours = _robust_accuracy(model, attack(model, x, y, generator=torch.Generator().manual_seed(0), early_stop=True), y)
    assert ours <= theirs + 0.005, (
        f"robustlab {ours:.3f} vs reference {theirs:.3f}; broken per component {attack.broken}"
    )


@pytest.mark.parametrize(("norm", "eps"), BUDGETS, ids=["linf-8", "linf-2", "l2-0.5"])
def test_autoattack_matches_the_reference_on_the_default_model(
    trained_model: nn.Module, synth_batch: tuple[torch.Tensor, torch.Tensor], norm: str, eps: float
) -> None:
    _assert_parity(trained_model, synth_batch[0][:N], synth_batch[1][:N], norm, eps)


@pytest.fixture(scope="module")
def torchvision_model() -> nn.Module:
    """torchvision's resnet18 trained on the synthetic world at 32x32 (cached like the default model)."""
    from robustlab.models import load_model

    return load_model("resnet18", weights="synth", progress=False).eval()


@pytest.mark.parametrize(("norm", "eps"), BUDGETS, ids=["linf-8", "linf-2", "l2-0.5"])
def test_autoattack_matches_the_reference_on_a_torchvision_net(
    torchvision_model: nn.Module, synth_batch: tuple[torch.Tensor, torch.Tensor], norm: str, eps: float
) -> None:
    x, y = synth_batch
    with torch.no_grad():
        correct = (torchvision_model(x).argmax(1) == y).nonzero().flatten()[:N]
    _assert_parity(torchvision_model, x[correct], y[correct], norm, eps)
