"""Gradient-masking diagnostics fire on a masking defense and stay quiet on an honest model."""

from __future__ import annotations

import pytest
import torch
from robustlab.defenses.quantize import Quantize
from torch import nn

from robustlab.diagnostics.masking import Probe, ProbeSettings, attack_gaps, probe_gradient_masking, threat_mode_gaps
from robustlab.reports.report import Row

SETTINGS = ProbeSettings(eps_factors=(0.5, 1.0, 2.0), pgd_steps=5, square_queries=200)


@pytest.fixture(scope="module")
def probe_batch(
    trained_model: nn.Module, synth_batch: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = synth_batch[0][:64], synth_batch[1][:64]
    keep = trained_model(x).argmax(1) == y
    return x[keep], y[keep]


def _codes(attacked: nn.Module, scored: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> set[str]:
    found = probe_gradient_masking(
        attacked, scored, *batch, settings=SETTINGS, generator=torch.Generator().manual_seed(0)
    )
    return {d.code for d in found}


def test_quiet_on_undefended_model(trained_model: nn.Module, probe_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert _codes(trained_model, trained_model, probe_batch) == set()


def test_fires_on_quantiser_without_surrogate(
    trained_model: nn.Module, probe_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    defense = Quantize(levels=8, bpda=False)
    codes = _codes(defense.wrap(trained_model, adaptive=True), defense.wrap(trained_model), probe_batch)
    assert "masking.zero_gradients" in codes
    assert "masking.large_eps_not_zero" in codes


def test_bpda_removes_the_symptoms(trained_model: nn.Module, probe_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    defense = Quantize(levels=8)
    codes = _codes(defense.wrap(trained_model, adaptive=True), defense.wrap(trained_model), probe_batch)
    assert "masking.zero_gradients" not in codes
    assert "masking.large_eps_not_zero" not in codes


def test_fires_on_randomized_outputs(trained_model: nn.Module, probe_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    class Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return trained_model((x + 0.05 * torch.randn_like(x)).clamp(0, 1))

    assert "masking.randomized_outputs" in _codes(trained_model, Noisy().eval(), probe_batch)


def _row(mode: str, robust: float, *, attack: str = "pgd", task: str = "classification") -> Row:
    return Row("m", "d", mode, attack, "linf 8/255", 100, 0.99, robust, 0.5, 0.03, 0.03, 1.0, task=task)


@pytest.mark.parametrize(
    ("transfer", "adaptive", "expected"),
    [(0.8, 0.1, {"oblivious_only"}), (0.1, 0.8, {"masking.adaptive_weaker_than_transfer"}), (0.3, 0.28, set())],
)
def test_threat_mode_gaps(transfer: float, adaptive: float, expected: set[str]) -> None:
    found = threat_mode_gaps([_row("transfer", transfer), _row("adaptive", adaptive)])
    assert {d.code for d in found} == expected


def test_rows_of_other_downstream_heads_are_not_compared() -> None:
    """One attack on two heads scores two label sets: a gap between them says nothing about masking."""
    heads = [_row("-", 0.83, task="downstream/shape"), _row("-", 0.08, task="downstream/color")]
    assert attack_gaps(heads) == []
    assert threat_mode_gaps([_row("transfer", 0.8, task="downstream/shape"), _row("adaptive", 0.1, task="x")]) == []
    same_head = [_row("-", 0.83, task="downstream/shape"), _row("-", 0.08, attack="apgd", task="downstream/shape")]
    assert [d.code for d in attack_gaps(same_head)] == ["masking.attacks_disagree"]


@pytest.mark.slow
def test_an_under_attacked_robust_model_is_flagged_not_converged() -> None:
    """PGD with 2 steps on the adversarially trained model leaves samples that APGD with 10 steps x 5 breaks."""
    from click.testing import CliRunner

    from robustlab.cli import cli

    args = ["eval", "-q", "--weights", "synth-at", "--attack", "pgd", "--steps", "2", "--diagnostics", "full"]
    result = CliRunner().invoke(cli, [*args, "-n", "64"])
    assert result.exit_code == 0, result.output
    flagged = [line for line in result.output.splitlines() if line.startswith("! not_converged")]
    assert flagged and "steps=10" in flagged[0], result.output


@pytest.mark.slow
def test_autoattack_standard_is_not_flagged_not_converged() -> None:
    """The same model under AutoAttack standard: APGD with 5x its steps and 5 restarts finds nothing more."""
    from click.testing import CliRunner

    from robustlab.cli import cli

    args = ["eval", "-q", "--weights", "synth-at", "--attack", "autoattack", "--diagnostics", "full", "-n", "16"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "autoattack" in result.output and "! not_converged" not in result.output, result.output


def test_shattered_gradients_are_flagged_and_a_bpda_surrogate_is_not(
    trained_model: nn.Module, probe_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    from robustlab.diagnostics.masking import shattered_gradients

    class Shattered(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return trained_model(x + 0.001 * torch.sin(10000 * x))

    def codes(attacked: nn.Module, scored: nn.Module) -> list[str]:
        found = shattered_gradients(Probe(attacked, scored, *probe_batch, SETTINGS, torch.Generator().manual_seed(0)))
        return [code for code, _ in found]

    assert codes(Shattered().eval(), Shattered().eval()) == ["shattered_gradients"]
    assert codes(trained_model, trained_model) == []
    defense = Quantize(levels=8)
    assert codes(defense.wrap(trained_model, adaptive=True), defense.wrap(trained_model)) == []


class _SignCounter(nn.Module):
    """Class 1 when the signs of ``x - centre`` (the nearest point of a 1/8 grid) sum high: 5% of uniform noise
    draws flip a sample, and the gradient is zero, so PGD gets one draw (its random start) and noise a hundred."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = ((x * 8).floor() + 0.5) / 8
        signs = torch.sign(x - centre).flatten(1)
        z = signs.sum(1) / signs.shape[1] ** 0.5 - 1.645
        return torch.stack([torch.zeros_like(z), z], dim=1)


def test_noise_that_beats_the_gradient_is_flagged_and_an_honest_model_is_not(
    trained_model: nn.Module, probe_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    from robustlab.diagnostics.masking import noise_sanity

    def codes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
        found = noise_sanity(Probe(model, model, x, y, SETTINGS, torch.Generator().manual_seed(0)))
        return [code for code, _ in found]

    centres = (torch.randint(8, (64, 3, 8, 8), generator=torch.Generator().manual_seed(0)) + 0.5) / 8
    assert codes(_SignCounter().eval(), centres, torch.zeros(64, dtype=torch.long)) == ["noise_beats_gradient"]
    assert codes(trained_model, *probe_batch) == []
