from __future__ import annotations

import pytest
import torch

from robustlab.errors import ConfigError, ThreatModelViolation
from robustlab.threat import Norm, ThreatModel, format_eps, parse_eps, perturbation_norm, verify


@pytest.mark.parametrize(("text", "value"), [("8/255", 8 / 255), ("0.5", 0.5), ("3e-2", 0.03), ("1", 1.0), ("0", 0.0)])
def test_parse_eps(text: str, value: float) -> None:
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["2", "-1/255", "abc", "1/0", "300/255"])
def test_parse_eps_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="eps"):
        parse_eps(text)


def test_format_eps() -> None:
    assert format_eps(8 / 255) == "8/255"
    assert format_eps(0.5) == "0.5"
    assert (format_eps(1e-12), format_eps(0.0)) == ("1e-12", "0"), "a budget under 1/255 is not 0/255"
    assert ThreatModel(Norm.L2, None).describe() == "l2 unbounded"


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=generator) * 0.5 + 0.25
    return x, x.clone()


def test_verify_accepts_within_budget() -> None:
    x, x_adv = _pair()
    x_adv += 8 / 255
    verify(ThreatModel(Norm.LINF, 8 / 255), x, x_adv)


def test_verify_rejects_over_budget_linf() -> None:
    x, x_adv = _pair()
    x_adv[0, 0, 0, 0] += 9 / 255
    with pytest.raises(ThreatModelViolation, match="exceeds the budget"):
        verify(ThreatModel(Norm.LINF, 8 / 255), x, x_adv)


def test_verify_rejects_over_budget_l2() -> None:
    x, x_adv = _pair()
    x_adv[1] += 0.1  # L2 norm 0.1 * sqrt(192) ≈ 1.39
    with pytest.raises(ThreatModelViolation, match="l2 size"):
        verify(ThreatModel(Norm.L2, 0.5), x, x_adv)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda t: t.__setitem__((0, 0, 0, 0), float("nan")), "NaN"),
        (lambda t: t.__setitem__((0, 0, 0, 0), 1.01), r"leaves \[0, 1\]"),
        (lambda t: t.__setitem__((0, 0, 0, 0), -0.01), r"leaves \[0, 1\]"),
    ],
)
def test_verify_rejects_invalid_images(corrupt, message: str) -> None:  # type: ignore[no-untyped-def]
    x, x_adv = _pair()
    corrupt(x_adv)
    with pytest.raises(ThreatModelViolation, match=message):
        verify(ThreatModel(Norm.LINF, 1.0), x, x_adv)


def test_verify_rejects_shape_and_dtype_changes() -> None:
    x, _ = _pair()
    with pytest.raises(ThreatModelViolation, match="input was"):
        verify(ThreatModel(Norm.LINF, 1.0), x, x.double())
    with pytest.raises(ThreatModelViolation, match="input was"):
        verify(ThreatModel(Norm.LINF, 1.0), x, x[:2])


def test_perturbation_norms() -> None:
    x = torch.zeros(2, 1, 2, 2)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] = 0.3
    x_adv[0, 0, 1, 1] = 0.4
    assert perturbation_norm(x, x_adv, Norm.LINF).tolist() == pytest.approx([0.4, 0.0])
    assert perturbation_norm(x, x_adv, Norm.L2).tolist() == pytest.approx([0.5, 0.0])
    assert perturbation_norm(x, x_adv, Norm.L0).tolist() == [2.0, 0.0]
