"""SVE and LSVR on matrices whose spectra are known by construction."""

from __future__ import annotations

import math

import pytest
import torch

from robustlab.errors import ConfigError
from robustlab.spectral import (
    feature_spectrum,
    largest_singular_value_ratio,
    singular_value_entropy,
    spectral_summary,
)


def _with_spectrum(values: list[float], n: int = 12, seed: int = 0) -> torch.Tensor:
    """An ``(n, len(values))`` matrix ``U diag(values) V^T`` with random orthonormal ``U`` and ``V``."""
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, len(values), generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=generator, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T


def test_equal_singular_values_have_maximal_entropy_and_minimal_ratio() -> None:
    values = torch.linalg.svdvals(_with_spectrum([2.0] * 6))
    assert singular_value_entropy(values) == pytest.approx(math.log(6), abs=1e-9)
    assert largest_singular_value_ratio(values) == pytest.approx(1 / 6, abs=1e-9)


def test_rank_one_has_zero_entropy_and_ratio_one() -> None:
    values = torch.linalg.svdvals(_with_spectrum([5.0, 0.0, 0.0, 0.0]))
    assert singular_value_entropy(values) == pytest.approx(0.0, abs=1e-6)
    assert largest_singular_value_ratio(values) == pytest.approx(1.0, abs=1e-9)


def test_known_two_value_spectrum() -> None:
    values = torch.linalg.svdvals(_with_spectrum([3.0, 1.0]))
    assert singular_value_entropy(values) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert largest_singular_value_ratio(values) == pytest.approx(0.75)


def test_feature_spectrum_ignores_each_sample_norm_and_offset() -> None:
    """The official analysis L2-normalises each feature vector and centres it over its own dimensions."""
    features = torch.randn(20, 8, generator=torch.Generator().manual_seed(1))
    scales = torch.rand(20, 1, generator=torch.Generator().manual_seed(2)) + 0.5
    assert torch.allclose(feature_spectrum(features * scales), feature_spectrum(features))
    # Rows that differ only by a per-row constant and scale collapse to the same centred direction: rank one.
    ramp = torch.arange(8.0)
    collapsed = feature_spectrum(torch.stack([ramp * (1 + i) + i for i in range(5)]))
    assert float(collapsed[1:].abs().max()) < 1e-9 < float(collapsed[0])
    summary = spectral_summary(torch.stack([ramp * (1 + i) + i for i in range(5)]))
    assert summary["lsvr"] == pytest.approx(1.0) and summary["sve"] == pytest.approx(0.0, abs=1e-6)


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(ConfigError):
        feature_spectrum(torch.ones(3))
    with pytest.raises(ConfigError):
        singular_value_entropy(torch.zeros(4))
