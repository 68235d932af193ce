"""The sanity gate's rules on their own: chance level, NaN logits, outputs that ignore the input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.diagnostics.sanity import chance_level, output_checks, randomized
from robustlab.reports.report import Row

NAMES = ("m", "none")


def _row(clean: float) -> Row:
    return Row("m", "none", "-", "pgd", "linf 8/255", 1000, clean, 0.0, 1.0, None, None, 0.0)


@pytest.mark.parametrize(
    ("clean", "labels", "flagged"),
    [
        (0.086, torch.arange(1000) % 10, True),  # the user's resnet18 resized to 224
        (0.14, torch.arange(1000) % 10, True),
        (0.30, torch.arange(1000) % 10, False),
        (0.20, torch.arange(20) % 10, True),  # 20 samples cannot tell 20% from chance
        (0.30, torch.arange(20) % 10, False),
        (0.55, torch.cat([torch.zeros(500), torch.ones(500)]), True),
        (0.65, torch.cat([torch.zeros(500), torch.ones(500)]), False),
        (0.52, torch.cat([torch.zeros(900), torch.ones(100)]), True),  # below "always class 0"
        (0.0012, torch.arange(5000) % 1000, True),
        (0.01, torch.arange(5000) % 1000, False),
        (0.0, torch.zeros(50), True),  # one class that the model never predicts
        (0.1, torch.zeros(50), False),  # one class: a constant guess is right, so any hit says nothing more
    ],
)
def test_chance_level(clean: float, labels: torch.Tensor, flagged: bool) -> None:
    found = chance_level([_row(clean)], labels.long(), names=NAMES, fed="fed 224x224")
    assert bool(found) == flagged
    if flagged:
        assert found[0].code == "sanity.chance_level" and "--image-size" in found[0].message


def test_output_checks_flag_nan_and_input_independent_models(synth_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = synth_batch
    constant = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    constant[1].weight.data.zero_()
    assert [d.code for d in output_checks(constant.eval(), x, names=NAMES)] == ["sanity.constant_outputs"]
    broken = nn.Sequential(constant, nn.Softplus(threshold=-1.0), nn.Threshold(1e9, float("nan")))
    assert [d.code for d in output_checks(broken.eval(), x, names=NAMES)] == ["sanity.nonfinite_logits"]


def test_randomized_is_two_passes_disagreeing(trained_model: nn.Module) -> None:
    x = torch.rand(4, 3, 32, 32)
    assert not randomized(trained_model, x)
    assert randomized(nn.Dropout(0.5).train(), x)
