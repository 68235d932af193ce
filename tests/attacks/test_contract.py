"""Contracts every registered perturbation attack keeps, generated from the registry (timm/torchattacks style)."""

from __future__ import annotations

from typing import Any

import pytest
import robustlab.attacks
import torch

from robustlab.attack import ATTACKS, AttackKind
from robustlab.components import ComponentSpec
from robustlab.errors import ConfigError
from robustlab.threat import Norm, perturbation_norm

# Cheap settings so the whole table runs in seconds; each attack's defaults are tested elsewhere.
CHEAP: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 3},
    "pgdl2": {"steps": 3},
    "cw": {"steps": 10},
    "deepfool": {"steps": 5},
    "apgd": {"steps": 5},
    "apgdt": {"steps": 5, "n_target_classes": 2},
    "square": {"n_queries": 30},
    **{
        audit: {"steps": 2, "restarts": 1, "queries": 20, "aa_steps": 2, "eps_factors": "2", "sweep_steps": "2"}
        for audit in ("audit", "audit-rand")
    },
}
PERTURBATION = [
    entry.name
    for entry in robustlab.attacks.ATTACKS.entries()
    if not entry.name.startswith("autoattack")
    and getattr(entry.factory, "kind", AttackKind.PERTURBATION) is AttackKind.PERTURBATION
]


def _build(name: str) -> Any:
    return ComponentSpec(name, tuple(CHEAP.get(name, {}).items())).build(ATTACKS)


@pytest.fixture(scope="module")
def batch(synth_batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = synth_batch
    return x[:6].clone(), y[:6].clone()


@pytest.mark.parametrize("name", PERTURBATION)
def test_output_contract(name: str, trained_model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    attack = _build(name)
    x, y = batch
    x_before = x.clone()
    x_adv = attack(trained_model, x, y, generator=torch.Generator().manual_seed(1))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    threat = attack.threat
    if threat.eps is not None and threat.norm in (Norm.LINF, Norm.L2):
        assert float(perturbation_norm(x, x_adv, threat.norm).max()) <= threat.eps + 1e-6
    assert torch.equal(x, x_before), "the attack modified its input in place"
    assert not trained_model.training
    again = attack(trained_model, x, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x_adv, again), "same generator seed must give a bit-identical result on CPU"


@pytest.mark.parametrize("name", PERTURBATION)
def test_rejects_images_outside_unit_box(name: str, trained_model: torch.nn.Module) -> None:
    x = torch.full((2, 3, 32, 32), 1.5)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        _build(name)(trained_model, x, torch.zeros(2, dtype=torch.long))


def test_rejects_model_in_training_mode(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).train()
    with pytest.raises(ConfigError, match="training mode"):
        _build("fgsm")(model, *batch)


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(ConfigError, match="no parameter 'stepz'"):
        ComponentSpec("pgd", (("stepz", 3),)).build(ATTACKS)
