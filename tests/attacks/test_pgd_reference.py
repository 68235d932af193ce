"""robustlab's pgd against torchattacks.PGD called directly on the same model, data and seed."""

from __future__ import annotations

import torch
import torchattacks
from robustlab.attacks import ATTACKS

from robustlab.components import ComponentSpec
from robustlab.evaluate import EvalConfig, Evaluator


def _robust_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_pgd_equals_torchattacks_when_configured_identically(
    trained_model: torch.nn.Module, synth_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # Without a random start both are deterministic, so the numbers must agree exactly.
    x, y = synth_batch
    params = {"eps": 4 / 255, "step_size": 1 / 255, "steps": 10, "random_start": False}
    ours = ComponentSpec("pgd", tuple(params.items())).build(ATTACKS)(trained_model, x, y)
    reference = torchattacks.PGD(trained_model, eps=4 / 255, alpha=1 / 255, steps=10, random_start=False)(x, y)
    assert _robust_accuracy(trained_model, ours, y) == _robust_accuracy(trained_model, reference, y)
    assert torch.allclose(ours, reference)


def test_evaluator_pgd_matches_torchattacks(
    trained_model: torch.nn.Module, synth_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # Through the whole evaluator (clean pass, attacking only correct samples, scoring) the robust
    # accuracy is the one torchattacks.PGD gives on the same samples.
    x, y = synth_batch
    reference = torchattacks.PGD(trained_model, eps=2 / 255, alpha=0.5 / 255, steps=10, random_start=False)(x, y)
    params = (("eps", 2 / 255), ("step_size", 0.5 / 255), ("random_start", False))
    report = Evaluator(progress=False).run(EvalConfig(attacks=(ComponentSpec("pgd", params),), n=len(x)))
    expected = _robust_accuracy(trained_model, reference, y)
    assert 0.05 < expected < 0.95, "the budget should leave a robust accuracy that can differ"
    assert report.rows[0].robust_acc == expected
