"""Gaussian blur as a corruption: registered, model-free, a real low-pass filter that hurts a trained model."""

from __future__ import annotations

import pytest
import torch
from kornia.filters import gaussian_blur2d
from robustlab.attacks.blur import GaussianBlur

from robustlab.attack import ATTACKS, AttackKind
from robustlab.components import ComponentSpec
from robustlab.errors import ConfigError
from robustlab.threat import Norm


def test_registered_as_a_model_free_unbounded_perturbation() -> None:
    attack = ComponentSpec("blur", (("sigma", 1.5),)).build(ATTACKS)
    assert attack.kind is AttackKind.PERTURBATION and attack.threat.norm is Norm.UNBOUNDED
    assert not attack.uses_gradients and attack.sigma == 1.5


def test_blur_matches_kornia_and_ignores_the_model(synth_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = synth_batch[0][:4], synth_batch[1][:4]
    out = GaussianBlur(sigma=1.0)(torch.nn.Identity().eval(), x, y)
    expected = gaussian_blur2d(x, (7, 7), (1.0, 1.0), border_type="replicate")
    torch.testing.assert_close(out, expected.clamp(0, 1))
    other = GaussianBlur(sigma=1.0)(torch.nn.Flatten().eval(), x, y.flip(0))
    assert torch.equal(out, other)


def test_sigma_zero_is_the_identity(synth_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = synth_batch[0][:4], synth_batch[1][:4]
    assert torch.equal(GaussianBlur(sigma=0.0)(torch.nn.Identity().eval(), x, y), x)


def test_more_blur_removes_more_detail(synth_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = synth_batch[0][:16], synth_batch[1][:16]

    def high_frequency_energy(images: torch.Tensor) -> float:
        return float((images[..., 1:] - images[..., :-1]).abs().mean())

    energies = [high_frequency_energy(GaussianBlur(sigma=s)(torch.nn.Identity().eval(), x, y)) for s in (0, 1, 2, 3)]
    assert energies == sorted(energies, reverse=True) and energies[-1] < 0.5 * energies[0]


def test_strong_blur_hurts_the_trained_classifier(
    trained_model: torch.nn.Module, synth_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = synth_batch
    with torch.inference_mode():
        clean = (trained_model(x).argmax(1) == y).double().mean().item()
        blurred = (trained_model(GaussianBlur(sigma=3.0)(trained_model, x, y)).argmax(1) == y).double().mean().item()
    assert blurred < clean - 0.2


@pytest.mark.parametrize("sigma", [-1.0, float("nan"), float("inf")])
def test_rejects_bad_sigma(sigma: float) -> None:
    with pytest.raises(ConfigError, match="sigma"):
        GaussianBlur(sigma=sigma)
