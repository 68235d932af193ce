"""BPDA and EOT sanity (Athalye et al. 2018; foolbox's EOT wrapper test)."""

from __future__ import annotations

import torch
from robustlab.defenses.quantize import Quantize
from torch import nn

from robustlab.defense import EOT, bpda


def test_bpda_forward_is_the_real_transform_and_backward_the_surrogate() -> None:
    defense = Quantize(levels=4)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = bpda(defense.transform, defense.surrogate, x)
    assert torch.equal(out, defense.transform(x))
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_adaptive_wrap_passes_gradients_plain_wrap_does_not(trained_model: nn.Module) -> None:
    defense = Quantize(levels=8)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for adaptive, expect_signal in ((True, True), (False, False)):
        probe = x.clone().requires_grad_(True)
        defense.wrap(trained_model, adaptive=adaptive)(probe).sum().backward()
        assert bool(probe.grad.abs().sum() > 0) is expect_signal


def test_eot_over_a_deterministic_model_changes_nothing(trained_model: nn.Module) -> None:
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(EOT(trained_model, n_samples=5)(x), trained_model(x), atol=1e-6)
